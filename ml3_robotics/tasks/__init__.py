"""The tasks: reach (features, task loss, policies, execution), MountainCar, sine."""
