"""Built TensorFlow 1 graphs kept on disk, for the graph-mode adapters (adapters/tensorflow_layers.py).

Those adapters build one graph per signature (rank, channel count, dtype, axis, affine, device, eps where it is an
op attribute), and a battery meets a new signature in most examples: building one in Python (the layer, tf.cond's
branches, tf.gradients, the Session) costs 0.1 to 0.3 s on a CPU. Importing the same graph from its saved
MetaGraphDef (`tf.compat.v1.train.import_meta_graph`: the GraphDef with its function library, variables and
collections) costs about a fifth of that, so a later worker or run imports what an earlier one built. What runs
is the graph that was built: the very GraphDef, bit for bit (tests/adapters/test_tensorflow_layers.py checks the
outputs). An entry is keyed by the adapter's program key (backend and signature), TensorFlow's version and
build, tf_keras' installed files, bnconf's files that build the graph (by content) and the TF_* environment.

Where: `$BNCONF_TF_CACHE` (a folder; "off", "0" or "" turn it off), else `$XDG_CACHE_HOME/bnconf/tf-graphs`
(`~/.cache/bnconf/tf-graphs`). A graph's ops may read and write files when run, so entries are kept by
`signed_store` (nothing is imported that is not signed under the folder's private key, the folder must be this
user's alone). Nothing here imports TensorFlow at import time.
"""

import functools
import json
from pathlib import Path

from . import signed_store

ENV = "BNCONF_TF_CACHE"
FORMAT = 1  # of an entry; part of every key


def cache_dir() -> Path | None:
    """The folder, None when turned off (`BNCONF_TF_CACHE=off`)."""
    return signed_store.folder_from(ENV, "tf-graphs")


@functools.lru_cache(maxsize=None)
def fingerprint(sources: tuple[str, ...]) -> str:
    """A digest of what a built graph depends on beyond its key: TensorFlow's version and build, tf_keras' installed
    files, bnconf's `sources` and the TF_* environment."""
    import tensorflow as tf

    facts = (tf.version.VERSION, tf.version.GIT_VERSION)
    return signed_store.fingerprint(facts, {"tf_keras"}, sources, ("TF_",), ENV)


def key_text(program: tuple, sources: tuple[str, ...]) -> str:
    """The entry's key: `program` (its repr must be stable across processes) and the fingerprint."""
    return repr((FORMAT, program, fingerprint(tuple(sources))))


def _store():
    """(folder, key) when the cache is on and safely this user's, else None."""
    return signed_store.opened(cache_dir(), "TensorFlow graph", ENV)


def load(program: tuple, sources: tuple[str, ...]):
    """(a new tf.Graph holding the saved graph, its handles as saved) or None: no entry, the cache off, an entry
    not signed here (never parsed), or one that does not import (removed)."""
    store = _store()
    if store is None:
        return None
    folder, key = store
    text = key_text(program, sources)
    parts = signed_store.read(folder, text, key)
    if parts is None:
        return None
    try:
        import tensorflow as tf

        meta, handles = parts
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.train.import_meta_graph(tf.compat.v1.MetaGraphDef.FromString(meta))
        return graph, json.loads(handles)
    except Exception:  # noqa: BLE001 - from another TensorFlow, or damaged: built afresh
        signed_store.discard(folder, text)
        return None


def save(program: tuple, sources: tuple[str, ...], graph, handles: dict) -> None:
    """Keep `graph` (its MetaGraphDef) and its `handles` (JSON: tensor, op and variable names) under `program`;
    a graph that cannot be exported stays in memory only."""
    store = _store()
    if store is None:
        return
    folder, key = store
    try:
        import tensorflow as tf

        with graph.as_default():
            meta = tf.compat.v1.train.export_meta_graph(graph=graph).SerializeToString()
    except Exception:  # noqa: BLE001 - not exportable: nothing saved
        return
    signed_store.write(folder, key_text(program, sources), [meta, json.dumps(handles).encode()], key)
