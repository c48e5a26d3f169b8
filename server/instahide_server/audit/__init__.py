"""The audit service for every audit kind: ``servicer`` (the RPCs), ``jobs`` (queue, workers, progress, cancel),
``store`` (the SQLite file; ``legacy`` reads rows of the layout before audit kinds), ``kinds`` (the spec's
``kind`` member → an adapter), one adapter module per kind (``reconstruction``), ``inputs`` (chunks and
server-side datasets)."""
