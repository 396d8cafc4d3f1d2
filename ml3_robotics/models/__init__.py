"""Learned dynamics: the probabilistic ensemble, its fitting and the replay buffer."""
