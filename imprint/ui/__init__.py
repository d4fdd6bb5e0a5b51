"""The local web dashboard (`imprint ui`): memories, search, stats, facts,
trust and sync, served by a FastAPI app (:func:`imprint.ui.app.create_app`)
over one set of local actors. Importing this package imports no web stack."""
