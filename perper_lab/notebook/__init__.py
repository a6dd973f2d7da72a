"""The notebook layer: IPython extension, magics and live views."""
