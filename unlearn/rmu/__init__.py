"""RMU (Li et al., arXiv 2403.03218): the training step and the rmu-baseline command."""
