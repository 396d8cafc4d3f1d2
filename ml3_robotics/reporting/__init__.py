"""Plots, loss landscapes and videos: take results, write files where they are told."""
