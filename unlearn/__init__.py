"""SAE-based unlearning experiments on language models.

Reproduces Farrell, Lau & Conmy, *Applying sparse autoencoders to unlearn knowledge in language
models* (arXiv 2410.19278), with the RMU baseline of Li et al. (arXiv 2403.03218).
"""

__version__ = "0.1.0"
