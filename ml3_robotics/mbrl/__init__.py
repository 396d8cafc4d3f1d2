"""The model-based RL loop: babbling, collection and refits of the learned model;
meta-training over sampled arms."""
