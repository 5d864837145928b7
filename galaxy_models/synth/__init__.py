"""Synthetic surveys: GalSim renderings of the five classes (``galaxies``), simulated Galaxy Zoo
volunteers walking the decision tree (``volunteers``), and a writer that lays a survey out in a
store as real data arrives (``survey``)."""
