"""Callbacks for models built with keras-tether."""
