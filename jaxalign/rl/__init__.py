"""Reinforcement learning from feedback: reward models (`reward`) and the RL loop that optimises a
policy against them."""
