"""Thin, reproducible experiment entry points, discovered by ``ml3r`` via entry points."""
