"""Installing the grid as system services.

``systemd/`` holds the unit files themselves, shipped as package data and
copied verbatim (the repository's ``deploy/systemd/`` links to them). The
installer behind ``grid scheduler|node install-systemd`` is three modules,
one job each: :mod:`~grid.deploy.systemd_options` (the options and their
checks), :mod:`~grid.deploy.systemd_files` (the text of every file an
install writes: the shipped units, the drop-ins and environment files
rendered from the options) and :mod:`~grid.deploy.systemd_install` (what an
install writes where, writing it, and the ``install-systemd`` commands).
"""
