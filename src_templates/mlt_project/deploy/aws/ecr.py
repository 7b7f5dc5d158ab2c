"""The digest of an image in Amazon ECR, so that a sweep records exactly which image its
children run (a tag can be pushed again; a digest cannot change)."""

from __future__ import annotations

import logging
import re

from botocore.exceptions import BotoCoreError, ClientError

from ...base.errors import PipelineError
from .settings import client

# <account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag][@sha256:...]
ECR_IMAGE = re.compile(
    r"(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)

log = logging.getLogger(__name__)


def image_digest(image: str) -> str | None:
    """The image's digest: the one its URI pins, else ECR's for its tag; None elsewhere."""
    match = ECR_IMAGE.fullmatch(image)
    if match is None:
        log.debug("%s is not an ECR image: no digest looked up", image)
        return None
    if match["digest"]:
        return match["digest"]
    try:
        ecr = client("ecr", region=match["region"])
        details = ecr.describe_images(
            registryId=match["account"],
            repositoryName=match["repository"],
            imageIds=[{"imageTag": match["tag"] or "latest"}],
        )["imageDetails"]
    except (BotoCoreError, ClientError, PipelineError) as error:
        log.warning(
            "cannot read the digest of %s from ECR (%s): recorded without one", image, error
        )
        return None
    return details[0]["imageDigest"] if details else None
