"""What the flows show in the Prefect UI: metrics tables, pictures, store links, progress.

PNG pictures: Prefect's image artifact stores a URL, not the bytes. When
``NOWCAST_ARTIFACT_URL`` is set (e.g. ``http://127.0.0.1:4201/``, where
``nowcast server`` serves the PNG files under its work folder, which it sets as
``NOWCAST_ARTIFACT_ROOT``; default ``runs/``), a PNG under that folder is
published as an image artifact at the matching URL.
Every PNG is also embedded in a markdown artifact as a data URI, so it shows
in the UI with no file server at all.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

URL_ENV = "NOWCAST_ARTIFACT_URL"
ROOT_ENV = "NOWCAST_ARTIFACT_ROOT"
MAX_EMBED_BYTES = 2_000_000


def artifact_key(text: str) -> str:
    """A valid artifact key (lowercase letters, digits and dashes) from any text."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "nowcast"


def public_url(path: str | Path) -> str | None:
    """The http URL of a file under the served artifact folder, if one is configured."""
    base = os.environ.get(URL_ENV)
    if not base:
        return None
    root = os.path.abspath(os.environ.get(ROOT_ENV, "runs"))
    path = os.path.abspath(path)
    if os.path.commonpath([root, path]) != root:
        return None
    return base.rstrip("/") + "/" + os.path.relpath(path, root).replace(os.sep, "/")


def publish_scores(key: str, scores: Mapping[str, Mapping[str, Mapping[str, float]]], markdown: str,
                   description: str) -> None:
    """A markdown table and a table artifact (one row per source and lead) of verification scores."""
    create_markdown_artifact(markdown=f"## {description}\n\n{markdown}", key=artifact_key(key),
                             description=description)
    rows = [{"source": source, "lead_min": lead, **{k: round(float(v), 4) for k, v in values.items()}}
            for source, per_lead in scores.items() for lead, values in per_lead.items()]
    create_table_artifact(table=rows, key=artifact_key(f"{key}-rows"), description=description)


def publish_png(key: str, path: str | Path, description: str) -> None:
    """A PNG as an image artifact (when served over http) and embedded in a markdown artifact.

    The image artifact links a copy named by its content (``published/<stem>-<digest>.png`` beside it),
    so a run's link keeps showing that run's picture: evaluate writes fixed names, and the links of
    earlier runs showed the newest run's pictures.
    """
    path = Path(path)
    data = path.read_bytes()
    kept = path.parent / "published" / f"{path.stem}-{hashlib.sha256(data).hexdigest()[:12]}.png"
    url = public_url(kept)
    if url:
        kept.parent.mkdir(exist_ok=True)
        if not kept.exists():
            shutil.copyfile(path, kept)
        create_image_artifact(image_url=url, key=artifact_key(key), description=description)
    body = f"**{description}** (`{path}`)\n\n"
    if len(data) <= MAX_EMBED_BYTES:
        body += f"![{description}](data:image/png;base64,{base64.b64encode(data).decode()})\n"
    create_markdown_artifact(markdown=body, key=artifact_key(f"{key}-md"), description=description)


def publish_store(key: str, url: str, description: str) -> None:
    """A link artifact to a store: its URL, or its file URL (the artifact server serves pictures only)."""
    link = url if "://" in url else Path(url).resolve().as_uri()
    create_link_artifact(link=link, link_text=url, key=artifact_key(key), description=description)
