"""Scripted ALOHA demonstrations: gripper waypoints -> joint targets by inverse kinematics, in the joint scene.

The script plans a gripper trajectory for each arm from the sampled object pose (position of a "tool centre
point" between the fingertips plus orientation, and the gripper opening), turns every step of it into joint
targets with damped least-squares inverse kinematics (``mj_jac`` on a private ``MjData`` of the same model), and
drives the very joint-space scene used for evaluation with them. Planning in the end-effector (mocap) scene and
replaying joints is avoided on purpose: under MuJoCo 3.x the mocap weld lets grasps slip, and a replay in
another scene drifts.

Position servos with friction lag behind their targets, so each step's command also carries a small
correction for the measured joint error (an integral-like feedback on the arm joints); the command actually
sent is what is recorded as the action.

Transfer-cube: the right arm picks the cube from above and lifts it to the middle; the left arm takes it from
the side and the right lets go. Insertion: each arm picks its object from above (right the peg, left the
socket), both meet in the middle, and once both objects are in hand the approach is re-planned from where
they actually sit in the grippers before the right pushes the peg in. Waypoints marked ``joint=True`` are
reached by interpolating joints between IK solutions (chosen among several starting postures), so that the
large first moves never follow a Cartesian path through the wrist singularity.

:func:`run_script` simulates without rendering (physics only, hundreds of steps/s);
:mod:`pi0_embodiment_aloha.sim.episodes` replays successful runs with cameras (MuJoCo is deterministic: same seed and
commands, same states).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from pi0_embodiment_aloha.sim import ensure_headless_gl

ensure_headless_gl()

import mujoco  # noqa: E402

from pi0_embodiment_aloha.sim.env import MAX_STEPS, AlohaSim  # noqa: E402

#: Arm joint indices in qpos/qvel (the same for the 14-dim action without grippers).
ARM_QPOS = {"left": np.arange(0, 6), "right": np.arange(8, 14)}
ACTION_ARM = {"left": np.arange(0, 6), "right": np.arange(7, 13)}
ACTION_GRIPPER = {"left": 6, "right": 13}
#: Tool centre point in the ``gripper_link`` frame: on the approach axis, between the finger pads, a few
#: millimetres short of the fingertips (which reach x = 0.154).
TCP_OFFSET = np.array([0.13, 0.0, 0.0])
#: IK joint limits tighter than the model's, per arm joint (waist, shoulder, elbow, roll, wrist angle, rotate).
WRIST_LIMIT = np.array([np.pi, np.pi, np.pi, 1.6, np.pi, 2.6])
POSTURE_MASK = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
POSTURE_GAIN = 0.2
CUBE_HALF = 0.02
PEG_HALF_HEIGHT = 0.01
SOCKET_HALF_HEIGHT = 0.022


# ---- rotations ---------------------------------------------------------------------------------------------
def mat_to_quat(mat: np.ndarray) -> np.ndarray:
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.asarray(mat, dtype=np.float64).reshape(9))
    return quat


def quat_to_mat(quat: np.ndarray) -> np.ndarray:
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat, dtype=np.float64))
    return mat.reshape(3, 3)


def slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    q0, q1 = np.asarray(q0, float), np.asarray(q1, float)
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)


def frame(x_axis: Sequence[float], y_axis: Sequence[float]) -> np.ndarray:
    """Rotation matrix whose columns are the given (orthonormalised) x and y axes and their cross product."""
    x = np.asarray(x_axis, float)
    x = x / np.linalg.norm(x)
    y = np.asarray(y_axis, float)
    y = y - np.dot(y, x) * x
    y = y / np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)], axis=1)


def pointing(direction: Sequence[float], slide_axis: Sequence[float]) -> np.ndarray:
    """Gripper orientation whose approach axis (gripper x) is ``direction`` and whose fingers slide along
    ``slide_axis`` (gripper y)."""
    return frame(direction, slide_axis)


# ---- inverse kinematics ------------------------------------------------------------------------------------
class ArmIK:
    """Damped least-squares IK of one 6-joint arm's tool centre point (position and orientation)."""

    def __init__(self, model: Any, side: str, *, damping: float = 1e-2, rot_weight: float = 0.3) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.side = side
        self.body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"vx300s_{side}/gripper_link")
        self.qadr = ARM_QPOS[side]
        self.dofs = ARM_QPOS[side]  # hinge joints: qpos and dof addresses coincide for the arms
        # Keep the forearm roll and wrist rotation on the unflipped branch (|angle| < 1.6): the flipped
        # solution reaches the same poses but swings both joints through ~pi on the way, throwing the cube.
        self.lower = np.maximum(model.jnt_range[self.qadr, 0], -WRIST_LIMIT)
        self.upper = np.minimum(model.jnt_range[self.qadr, 1], WRIST_LIMIT)
        self.damping = damping
        self.rot_weight = rot_weight
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tool centre point position and gripper orientation (3x3) at arm joints ``q``."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        rot = self.data.xmat[self.body].reshape(3, 3).copy()
        return self.data.xpos[self.body] + rot @ TCP_OFFSET, rot

    def solve(
        self, pos: np.ndarray, rot: np.ndarray, q_init: np.ndarray, iters: int = 30, tol: float = 1e-4
    ) -> np.ndarray:
        """Arm joints putting the tool centre point at ``pos`` with orientation ``rot``, iterating from ``q_init``
        (the closest solution on its branch; joint limits enforced)."""
        q = np.clip(np.asarray(q_init, float).copy(), self.lower, self.upper)
        target_quat = mat_to_quat(rot)
        err = np.zeros(6)
        for _ in range(iters):
            cur_pos, cur_rot = self.forward(q)
            err[:3] = pos - cur_pos
            cur_quat = mat_to_quat(cur_rot)
            neg = np.zeros(4)
            mujoco.mju_negQuat(neg, cur_quat)
            diff = np.zeros(4)
            mujoco.mju_mulQuat(diff, target_quat, neg)
            vel = np.zeros(3)
            mujoco.mju_quat2Vel(vel, diff, 1.0)
            err[3:] = self.rot_weight * vel
            if np.linalg.norm(err) < tol:
                break
            mujoco.mj_comPos(self.model, self.data)
            point = cur_pos
            mujoco.mj_jac(self.model, self.data, self._jacp, self._jacr, point, self.body)
            jac = np.vstack([self._jacp[:, self.dofs], self.rot_weight * self._jacr[:, self.dofs]])
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + self.damping**2 * np.eye(6))
            dq = pinv @ err
            # Null-space pull of the forearm roll and wrist rotation towards 0: near the wrist singularity
            # (wrist angle 0, roll and rotate axes aligned) the two otherwise drift apart in opposite directions.
            dq += (np.eye(6) - pinv @ jac) @ (POSTURE_GAIN * POSTURE_MASK * -q)
            q = np.clip(q + dq, self.lower, self.upper)
        return q


    def solve_best(self, pos: np.ndarray, rot: np.ndarray, seeds: Sequence[np.ndarray]) -> np.ndarray:
        """Solve from several starting postures; keep the most accurate, then the least wound-up wrist."""
        best, best_key = None, None
        for seed in seeds:
            q = self.solve(pos, rot, seed, iters=200, tol=1e-6)
            p, r = self.forward(q)
            err = np.linalg.norm(p - pos) + 0.05 * np.linalg.norm(r - rot)
            key = (round(err, 3), float(np.abs(q[[3, 5]]).sum()))
            if best_key is None or key < best_key:
                best, best_key = q, key
        assert best is not None
        return best


#: Starting postures for IK of the waypoints reached in joint space (the wrist bent down: ``wrist_angle`` > 0).
IK_SEEDS = [
    np.array([0.0, -0.3, 0.6, 0.0, 1.2, 0.0]),
    np.array([0.0, -0.5, 0.8, 0.0, 0.4, 0.0]),
    np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0]),
    np.array([0.0, 0.0, 0.3, 0.0, 0.3, 0.0]),
]


# ---- trajectories ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Waypoint:
    t: int  # control step at which the gripper is at this pose
    pos: np.ndarray  # tool centre point, world frame
    quat: np.ndarray  # gripper orientation (w, x, y, z)
    gripper: float  # normalised opening, 0 closed .. 1 open
    joint: bool = False  # reach this waypoint by interpolating joints (not the gripper pose) from the previous one


def interpolate(waypoints: Sequence[Waypoint], t: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Pose and gripper at step ``t``: linear in position and opening, spherical in orientation."""
    if t <= waypoints[0].t:
        w = waypoints[0]
        return w.pos, quat_to_mat(w.quat), w.gripper
    for a, b in zip(waypoints, waypoints[1:], strict=False):
        if a.t <= t <= b.t:
            s = (t - a.t) / max(b.t - a.t, 1e-9)
            s = 0.5 - 0.5 * np.cos(np.pi * s)  # ease in and out: no velocity jumps at waypoints
            pos = (1 - s) * a.pos + s * b.pos
            return pos, quat_to_mat(slerp(a.quat, b.quat, s)), (1 - s) * a.gripper + s * b.gripper
    w = waypoints[-1]
    return w.pos, quat_to_mat(w.quat), w.gripper


def _wp(t: int, pos: np.ndarray | Sequence[float], rot: np.ndarray, gripper: float, joint: bool = False) -> Waypoint:
    return Waypoint(t, np.asarray(pos, float), mat_to_quat(rot), float(gripper), joint)


def segment(waypoints: Sequence[Waypoint], t: float) -> tuple[int, float]:
    """Index ``i`` of the waypoint being approached at step ``t`` and the eased progress ``s`` from waypoint
    ``i - 1`` (``i == 0``: before the first; ``i == len``: after the last)."""
    if t <= waypoints[0].t:
        return 0, 1.0
    for i in range(1, len(waypoints)):
        a, b = waypoints[i - 1], waypoints[i]
        if t <= b.t:
            s = (t - a.t) / max(b.t - a.t, 1e-9)
            return i, 0.5 - 0.5 * np.cos(np.pi * s)
    return len(waypoints), 1.0


def _pick_from_above(grip: np.ndarray, rot: np.ndarray) -> list[Waypoint]:
    """Steps 50-125 of a top-down pick: 10 cm above ``grip`` (a joint-space move), down, close, settle, lift."""
    above = grip + [0, 0, 0.10]
    return [_wp(50, above, rot, 1.0, joint=True), _wp(80, grip, rot, 1.0), _wp(92, grip, rot, 0.0),
            _wp(102, grip, rot, 0.0), _wp(125, above, rot, 0.0)]


def plan_transfer_cube(box: np.ndarray, start: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Right arm picks the cube from straight above and lifts it to the middle, still pointing down; the left
    arm comes in horizontally from the -x side with its fingers closing on the cube's top and bottom faces
    (the tapered right fingertips leave them free), then the right lets go and withdraws upwards."""
    b = np.array([box[0], box[1], CUBE_HALF])  # cube centre once settled on the table
    r_down = pointing([0, 0, -1], [0, -1, 0])  # straight down, fingers closing along y
    l_take = pointing([1, 0, 0], [0, 0, 1])  # horizontal towards +x, fingers closing along z
    grasp_offset = np.array([0, 0, 0.007])  # TCP above the cube centre: fingertips ~3 mm above the table
    meet = np.array([0.02, 0.5, 0.20])  # right TCP at the hand-over
    cube_at_meet = meet - grasp_offset
    r_start, l_start = start["right"], start["left"]
    right = [
        _wp(0, r_start[0], r_start[1], 0.1),
        *_pick_from_above(b + grasp_offset, r_down),
        _wp(160, meet, r_down, 0.0),
        _wp(212, meet, r_down, 0.0),
        _wp(224, meet, r_down, 1.0),
        _wp(250, meet + [0.04, 0, 0.10], r_down, 1.0),
    ]
    take = cube_at_meet + [-0.005, 0, 0]
    left = [
        _wp(0, l_start[0], l_start[1], 0.1),
        _wp(120, take + [-0.12, 0, 0], l_take, 1.0, joint=True),
        _wp(160, take + [-0.10, 0, 0], l_take, 1.0),
        _wp(190, take, l_take, 1.0),
        _wp(204, take, l_take, 0.0),
        _wp(230, take, l_take, 0.0),
        _wp(265, take + [-0.10, 0, 0.02], l_take, 0.0),
    ]
    return {"left": left, "right": right}


def plan_insertion(poses: np.ndarray, start: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Right arm picks the peg and left arm the socket, both from straight above (the socket near its -x end,
    leaving the +x opening free); both lift to the middle, the peg lined up with the socket's axis, and the
    right pushes the peg into the socket until it meets the pin. Once both objects are in hand, the approach is
    re-planned from where they actually sit in the grippers."""
    peg = np.array([poses[0], poses[1], PEG_HALF_HEIGHT])
    socket = np.array([poses[7], poses[8], SOCKET_HALF_HEIGHT])
    r_down = pointing([0, 0, -1], [0, -1, 0])
    l_down = pointing([0, 0, -1], [0, 1, 0])
    peg_grip = np.array([0, 0, 0.033 - PEG_HALF_HEIGHT])  # fingertips ~9 mm above the table, clear of it
    socket_grip = np.array([-0.03, 0, 0.027 - SOCKET_HALF_HEIGHT])
    socket_meet = np.array([-0.06, 0.5, 0.20])  # socket centre at the insertion
    pre, push = 0.15, 0.095  # peg centre's distance along +x from the socket centre: before, and pushed in
    r_start, l_start = start["right"], start["left"]
    right = [
        _wp(0, r_start[0], r_start[1], 0.1),
        *_pick_from_above(peg + peg_grip, r_down),
        _wp(170, socket_meet + [pre, 0, 0] + peg_grip, r_down, 0.0, joint=True),
    ]
    left = [
        _wp(0, l_start[0], l_start[1], 0.1),
        *_pick_from_above(socket + socket_grip, l_down),
        _wp(170, socket_meet + socket_grip, l_down, 0.0, joint=True),
    ]

    def replan(t: int, objects: np.ndarray, tcp: dict[str, np.ndarray]) -> dict[str, list[Waypoint]]:
        # Both objects are in hand and lined up (step 170): correct for where they actually sit in the grippers.
        peg_in_hand = tcp["right"] - objects[0:3]
        socket_in_hand = tcp["left"] - objects[7:10]
        hold_r = dataclasses.replace(right[-1], t=t, joint=False)
        hold_l = dataclasses.replace(left[-1], t=t, joint=False)
        new_right = [*right, hold_r,
                     _wp(t + 20, socket_meet + [pre, 0, 0] + peg_in_hand, r_down, 0.0),
                     _wp(t + 70, socket_meet + [push, 0, 0] + peg_in_hand, r_down, 0.0)]
        new_left = [*left, hold_l, _wp(t + 20, socket_meet + socket_in_hand, l_down, 0.0)]
        return {"left": new_left, "right": new_right}

    return {"left": left, "right": right, "replan": (175, replan)}


PLANNERS = {"transfer_cube": plan_transfer_cube, "insertion": plan_insertion}


class ScriptedPolicy:
    """Closed-loop scripted controller for one episode of a task (call :meth:`reset` after ``env.reset``)."""

    def __init__(self, env: AlohaSim, *, feedback: float = 1.0, feedback_limit: float = 0.3) -> None:
        if env.task not in PLANNERS:
            raise NotImplementedError(f"no scripted policy for {env.task!r}; available: {', '.join(PLANNERS)}")
        self.env = env
        model = env.physics.model.ptr
        self.ik = {side: ArmIK(model, side) for side in ("left", "right")}
        self.feedback = feedback
        self.feedback_limit = feedback_limit
        self.plan: dict[str, list[Waypoint]] = {}
        self.q_des: dict[str, np.ndarray] = {}
        self.integral: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        qpos = self.env.physics.data.qpos
        start = {}
        for side, ik in self.ik.items():
            q = qpos[ARM_QPOS[side]].copy()
            self.q_des[side] = q
            self.integral[side] = np.zeros(6)
            start[side] = ik.forward(q)
        plan = PLANNERS[self.env.task](self.env.object_pose, start)
        self.replan = plan.pop("replan", None)
        self.plan = plan
        # Joints at the waypoints reached in joint space (solved from several postures, so that a path through
        # the wrist singularity never has to be followed in Cartesian space).
        self.q_way: dict[str, dict[int, np.ndarray]] = {}
        for side, ik in self.ik.items():
            self.q_way[side] = {}
            q_prev = self.q_des[side]
            for i, w in enumerate(self.plan[side]):
                if i == 0:
                    self.q_way[side][0] = q_prev
                elif w.joint:
                    seeds = [q_prev, *[np.r_[yaw, seed[1:]] for seed in IK_SEEDS for yaw in (q_prev[0],)]]
                    q_prev = ik.solve_best(w.pos, quat_to_mat(w.quat), seeds)
                    self.q_way[side][i] = q_prev
                else:
                    q_prev = ik.solve(w.pos, quat_to_mat(w.quat), q_prev, iters=200)
                    self.q_way[side][i] = q_prev
        self.t = 0

    def __call__(self) -> np.ndarray:
        """Joint targets for the next step (uses the env's current state)."""
        action = np.zeros(14)
        qpos = self.env.physics.data.qpos
        if self.replan is not None and self.t == self.replan[0]:
            tcp = {side: ik.forward(qpos[ARM_QPOS[side]].copy())[0] for side, ik in self.ik.items()}
            self.plan = self.replan[1](self.t, self.env.object_pose, tcp)
        for side, ik in self.ik.items():
            plan = self.plan[side]
            pos, rot, grip = interpolate(plan, self.t + 1)
            i, s = segment(plan, self.t + 1)
            if 0 < i < len(plan) and plan[i].joint:
                q_des = (1 - s) * self.q_way[side][i - 1] + s * self.q_way[side][i]
            else:
                q_des = ik.solve(pos, rot, self.q_des[side])
            self.q_des[side] = q_des
            err = q_des - qpos[ARM_QPOS[side]]
            self.integral[side] = np.clip(
                self.integral[side] + self.feedback * 0.1 * err, -self.feedback_limit, self.feedback_limit
            )
            action[ACTION_ARM[side]] = q_des + self.integral[side]
            action[ACTION_GRIPPER[side]] = grip
        self.t += 1
        return action


def run_script(task: str, seed: int, *, max_steps: int = MAX_STEPS) -> tuple[np.ndarray, bool, float]:
    """Run the scripted policy without rendering: ``(actions (T, 14), success, max_reward)``."""
    with AlohaSim(task, cameras=(), max_steps=max_steps, terminate_on_success=False) as env:
        env.reset(seed)
        policy = ScriptedPolicy(env)
        policy.reset()
        actions = []
        done = False
        while not done:
            action = policy()
            actions.append(action)
            _, _, done, _ = env.step(action)
        return np.asarray(actions), env.success, env.max_reward


__all__ = ["PLANNERS", "ArmIK", "ScriptedPolicy", "Waypoint", "interpolate", "run_script"]
