"""The typed shapes that cross pi0's seams: an observation a robot sends, the reply a policy gives.

An observation is a map of the robot's own keys (nested maps, or flat keys holding ``/``) to numpy arrays,
numbers and strings (the prompt); a reply holds ``actions`` [H, robot_dim] and timing maps. Both are plain
``dict`` at the top: that is what the wire codec decodes, what transforms build, and what every policy
(:class:`pi0cli.serving.served.ServedPolicy`) accepts.

Imports numpy only: the robot-side client, the server and the JAX-free artifact runtime share these names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

#: A numpy array of whatever dtype and shape.
type Array = npt.NDArray[np.generic]
#: A leaf of an observation or reply.
type Leaf = Array | np.generic | str | bytes | int | float | bool | None
#: A value under an observation key: a leaf, a nested map, or a list of values.
type ObservationValue = Leaf | Mapping[str, ObservationValue] | Sequence[ObservationValue]
#: One robot observation, as a client sends it.
type Observation = dict[str, ObservationValue]
#: What a policy answers for one observation: ``actions`` [H, robot_dim], ``policy_timing``, ...
type Reply = dict[str, ObservationValue]
