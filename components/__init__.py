"""Pulumi ComponentResources: thin shells that wire resources to the core's plain data."""
