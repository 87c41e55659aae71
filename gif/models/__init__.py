"""Architectures: the server-side registry, the paper's nets, the torchvision and timm zoos, checkpoints."""
