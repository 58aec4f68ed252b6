"""Leaf helpers: modules here import nothing of the package but `choices` and `errors` (both leaves themselves), so
any stage may use them."""
