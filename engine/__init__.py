"""Tessera: distributed inference for computer-vision models on Ray."""
