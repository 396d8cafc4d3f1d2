"""ML3 for robot control: meta-learned losses, learned dynamics and the model-based RL loop."""

__version__ = "0.1.0"
