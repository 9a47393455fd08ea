"""MONAI Label app for this repository's 2D lesion-segmentation bundles.

The folder is a MONAI Label app (``main.py`` + ``lib/``, loaded by path by ``monailabel start_server --app``) and
an importable package for its entry points: ``python -m labelapp`` (the server CLI) and ``labelapp.asgi:app``.
"""
