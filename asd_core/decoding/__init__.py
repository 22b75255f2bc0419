"""Decoding layer: the policy interface, verification, multiple-choice scoring and the pipeline."""
