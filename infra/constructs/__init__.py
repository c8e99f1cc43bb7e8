"""Per-domain constructs composed by ``infra.stack.CdpStack``.

Import as ``infra.constructs.<module>``: when ``infra/app.py`` runs as a script it takes
``infra/`` off ``sys.path`` so this folder cannot shadow the ``constructs`` library.
"""
