"""The 50 Meta-World ``-v3`` tasks: their instructions, the benchmark groups, and task selectors.

Pure data and string functions (nothing imports metaworld here), so shell completion and ``pi0 embodiments``
stay cheap.

Instructions are the task strings LeRobot's Meta-World environment and its ``lerobot/metaworld_mt50``
dataset use, kept identical on purpose: a policy trained on that dataset is evaluated with the very
instruction it was trained on. Note that LeRobot gives ``push-v3`` and ``push-back-v3`` the same string.

Groups: ``mt10`` and ``mt50`` are Meta-World's multi-task benchmarks; ``easy`` / ``medium`` / ``hard`` /
``very_hard`` are the difficulty split of MT50 that LeRobot and the SmolVLA paper report by (28/11/6/5).
"""

from __future__ import annotations

from collections.abc import Iterable

from pi0cli.errors import UnknownNameError

#: task -> the instruction a policy gets (LeRobot's task string for it).
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "Pick up a nut and place it onto a peg",
    "basketball-v3": "Dunk the basketball into the basket",
    "bin-picking-v3": "Grasp the puck from one bin and place it into another bin",
    "box-close-v3": "Grasp the cover and close the box with it",
    "button-press-topdown-v3": "Press a button from the top",
    "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top",
    "button-press-v3": "Press a button",
    "button-press-wall-v3": "Bypass a wall and press a button",
    "coffee-button-v3": "Push a button on the coffee machine",
    "coffee-pull-v3": "Pull a mug from a coffee machine",
    "coffee-push-v3": "Push a mug under a coffee machine",
    "dial-turn-v3": "Rotate a dial 180 degrees",
    "disassemble-v3": "Pick a nut out of a peg",
    "door-close-v3": "Close a door with a revolving joint",
    "door-lock-v3": "Lock the door by rotating the lock clockwise",
    "door-open-v3": "Open a door with a revolving joint",
    "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise",
    "drawer-close-v3": "Push and close a drawer",
    "drawer-open-v3": "Open a drawer",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "hammer-v3": "Hammer a screw on the wall",
    "hand-insert-v3": "Insert the gripper into a hole",
    "handle-press-side-v3": "Press a handle down sideways",
    "handle-press-v3": "Press a handle down",
    "handle-pull-side-v3": "Pull a handle up sideways",
    "handle-pull-v3": "Pull a handle up",
    "lever-pull-v3": "Pull a lever down 90 degrees",
    "peg-insert-side-v3": "Insert a peg sideways",
    "peg-unplug-side-v3": "Unplug a peg sideways",
    "pick-out-of-hole-v3": "Pick up a puck from a hole",
    "pick-place-v3": "Pick and place a puck to a goal",
    "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck",
    "plate-slide-back-side-v3": "Get a plate from the cabinet sideways",
    "plate-slide-back-v3": "Get a plate from the cabinet",
    "plate-slide-side-v3": "Slide a plate into a cabinet sideways",
    "plate-slide-v3": "Slide a plate into a cabinet",
    "push-back-v3": "Push the puck to a goal",
    "push-v3": "Push the puck to a goal",
    "push-wall-v3": "Bypass a wall and push a puck to a goal",
    "reach-v3": "Reach a goal position",
    "reach-wall-v3": "Bypass a wall and reach a goal",
    "shelf-place-v3": "Pick and place a puck onto a shelf",
    "soccer-v3": "Kick a soccer into the goal",
    "stick-pull-v3": "Grasp a stick and pull a box with the stick",
    "stick-push-v3": "Grasp a stick and push a box using the stick",
    "sweep-into-v3": "Sweep a puck into a hole",
    "sweep-v3": "Sweep a puck off the table",
    "window-close-v3": "Push and close a window",
    "window-open-v3": "Push and open a window",
}

TASKS: tuple[str, ...] = tuple(sorted(INSTRUCTIONS))

MT10: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
)
EASY: tuple[str, ...] = (
    "button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3", "button-press-wall-v3",
    "coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3", "door-open-v3", "door-unlock-v3",
    "drawer-close-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3", "handle-press-v3",
    "handle-press-side-v3", "handle-pull-v3", "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3",
    "plate-slide-back-v3", "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3", "reach-wall-v3",
    "window-close-v3", "window-open-v3", "peg-unplug-side-v3",
)
MEDIUM: tuple[str, ...] = (
    "basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3", "hammer-v3",
    "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3",
)
HARD: tuple[str, ...] = (
    "assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3",
)
VERY_HARD: tuple[str, ...] = (
    "shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3",
)

#: selector -> its tasks, in a fixed order (the difficulty groups partition MT50).
GROUPS: dict[str, tuple[str, ...]] = {
    "mt10": MT10,
    "mt50": TASKS,
    "easy": EASY,
    "medium": MEDIUM,
    "hard": HARD,
    "very_hard": VERY_HARD,
}

#: metaworld's scripted expert classes are named after the task, camel-cased, except this one.
_POLICY_NAME_EXCEPTIONS = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


def task_name(spelling: str) -> str:
    """The canonical task name: ``reach``, ``reach-v3``, ``Reach_V3`` and ``metaworld/reach-v3`` all mean
    ``reach-v3``. Raises :class:`~pi0cli.errors.UnknownNameError` (with the closest name) otherwise."""
    key = spelling.strip().split("/")[-1].lower().replace("_", "-").removeprefix("metaworld-")
    if not key.endswith("-v3"):
        key += "-v3"
    if key not in INSTRUCTIONS:
        raise UnknownNameError("Meta-World task", spelling, [*TASKS, *GROUPS])
    return key


def select_tasks(selector: str | Iterable[str]) -> tuple[str, ...]:
    """The tasks a selector names, in order and without repeats: a group (``mt10``, ``mt50``, ``easy``,
    ``medium``, ``hard``, ``very_hard``), a task name, or a comma-separated mix of both."""
    parts = selector.split(",") if isinstance(selector, str) else list(selector)
    chosen: dict[str, None] = {}
    for part in (p.strip() for p in parts):
        if not part:
            continue
        group = GROUPS.get(part.lower().replace("-", "_"))
        for task in group if group is not None else (task_name(part),):
            chosen.setdefault(task)
    if not chosen:
        raise UnknownNameError("Meta-World task selector", str(selector), [*GROUPS, *TASKS])
    return tuple(chosen)


def group_of(task: str) -> str:
    """The difficulty group (``easy`` .. ``very_hard``) a task belongs to."""
    for group in ("easy", "medium", "hard", "very_hard"):
        if task in GROUPS[group]:
            return group
    raise UnknownNameError("Meta-World task", task, TASKS)


def policy_class_name(task: str) -> str:
    """The name of metaworld's scripted expert for ``task`` (``push-v3`` -> ``SawyerPushV3Policy``): the whole
    camel-cased name, never a prefix, since ``SawyerPushBackV3Policy`` also starts with ``SawyerPush``."""
    task = task_name(task)
    if task in _POLICY_NAME_EXCEPTIONS:
        return _POLICY_NAME_EXCEPTIONS[task]
    words = task.removesuffix("-v3").split("-")
    return "Sawyer" + "".join(word.capitalize() for word in words) + "V3Policy"


__all__ = ["EASY", "GROUPS", "HARD", "INSTRUCTIONS", "MEDIUM", "MT10", "TASKS", "VERY_HARD", "group_of",
           "policy_class_name", "select_tasks", "task_name"]
