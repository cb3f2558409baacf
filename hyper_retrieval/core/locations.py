"""Whether a name given for a model or a collection means a local folder or a Hub id."""

from __future__ import annotations

from pathlib import Path


def looks_local(name: str) -> bool:
    """True when a backbone or collection `name` is meant as a folder, not a Hub id ('org/name' or 'name').

    Local: starts with '/', '.', '~', has two or more '/', a backslash, exists, or is 'a/b' where a folder 'a'
    exists here (so data/qasc_missing is a missing folder, not a Hub id).
    """
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or Path(name).expanduser().exists()
        or (name.count("/") == 1 and Path(name.split("/")[0]).is_dir())  # data/x where ./data exists
    )
