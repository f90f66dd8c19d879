"""A local S3-compatible server (moto's server mode) on 127.0.0.1, for store tests.

One server per test process, started on first use and stopped at exit. Starting it
points the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) of this process at it, as an operator would
for a deployment: s3fs/botocore read them, so the stores under test are opened exactly as
``TRAJHUB_STORAGE_URL=s3://...`` opens them. Every ``new_s3_url()`` is a fresh bucket.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import uuid
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


@functools.cache
def moto_endpoint() -> str:
    """The server's URL (starting it, and setting the AWS variables, on first call)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    atexit.register(server.stop)
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    return url


def s3_client() -> Any:
    """A plain boto3 client on the server (to look at what the stores wrote)."""
    return boto3.client("s3", endpoint_url=moto_endpoint(), region_name=REGION)


def new_s3_url(prefix: str = "trajhub") -> str:
    """``s3://<a new bucket>/<prefix>`` on the server."""
    bucket = f"trajhub-{uuid.uuid4().hex[:16]}"
    s3_client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def object_keys(url: str) -> list[str]:
    """Every object key under ``url`` (``s3://bucket/prefix``), relative to it."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    root = f"{prefix}/" if prefix else ""
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root)
    return sorted(o["Key"][len(root):] for page in pages for o in page.get("Contents", ()))
