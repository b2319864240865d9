"""The overview's rows, one module each, in the order overview.py lays them out."""
