"""Detector families behind one interface (base), the pretrained backbones they share, and the
registry that builds and loads them."""
