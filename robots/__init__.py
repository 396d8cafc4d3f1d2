"""Simulated systems: the ML3 MountainCar and configurable arms on MuJoCo and PyBullet.

Imports nothing from ``controllers`` or ``ml3_robotics``. Importing this package registers the
Gymnasium environments (lazily, by entry-point string).
"""

import gymnasium

# id -> "module:Class"; registration is lazy, so importing robots stays cheap.
ENV_IDS: dict[str, str] = {
    "ml3r/MountainCar-v0": "robots.mountain_car:MountainCarEnv",
    "ml3r/Reacher-v0": "robots.arm.env:ReachEnv",
    "ml3r/Arm3Reach-v0": "robots.arm.env:Arm3ReachEnv",
    "ml3r/Arm4Reach-v0": "robots.arm.env:Arm4ReachEnv",
    "ml3r/IiwaReach-v0": "robots.arm.env:IiwaReachEnv",
}

for _id, _entry in ENV_IDS.items():
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry)
