"""Leaf helpers: modules here import nothing of the package but `choices`, so any stage may use them."""
