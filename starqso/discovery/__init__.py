"""Discovery on embeddings (NumPy; scikit-learn, SciPy, faiss and matplotlib imported only by
the functions that need them, no TensorFlow):

* :mod:`~starqso.discovery.embed`: ``starqso embed``, the model's embeddings of every row;
* :mod:`~starqso.discovery.index`: :class:`NeighbourIndex`, exact or faiss HNSW search;
* :mod:`~starqso.discovery.outliers`: :func:`outlier_scores`;
* :mod:`~starqso.discovery.retrieval`: :func:`average_precision_at_r` (MAP@R),
  :func:`precision_at_k`;
* :mod:`~starqso.discovery.clusters`: :func:`voting_clusters`, :func:`cluster_purity`;
* :mod:`~starqso.discovery.plots`: :func:`plot_clusters`;
* :mod:`~starqso.discovery.explore`: ``starqso similar`` / ``starqso cluster``.

Every input a user can get wrong (an empty set, NaN rows, mismatched dimensions, a ``k`` or a
number of clusters out of range) raises a one-line :class:`~starqso.errors.InputError` ending
in ``Received: ...``. Rows without an embedding must be left out by the caller
(:meth:`starqso.io.embeddings.EmbeddingTable.usable`).

The public names of index, outliers, retrieval, clusters and plots are re-exported here (each
module's ``__all__``); ``embed`` and ``explore`` are imported on demand."""

# Each module's __all__ says what it exports; the package exports the same names.
from starqso.discovery import clusters, index, outliers, plots, retrieval
from starqso.discovery.clusters import *  # noqa: F403
from starqso.discovery.index import *  # noqa: F403
from starqso.discovery.outliers import *  # noqa: F403
from starqso.discovery.plots import *  # noqa: F403
from starqso.discovery.retrieval import *  # noqa: F403

__all__ = sorted({*index.__all__, *outliers.__all__, *retrieval.__all__, *clusters.__all__,
                  *plots.__all__})
