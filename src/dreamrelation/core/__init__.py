"""Shared types every layer uses; imports nothing else of the package (see README "Layout")."""
