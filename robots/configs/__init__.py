"""Arm configurations shipped as YAML package data."""
