"""Hub-ready export of trained models with their model cards (:mod:`.export`), and uploading them."""
