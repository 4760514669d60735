"""Backbone families, one module each. Importing this package registers every model with timm."""
