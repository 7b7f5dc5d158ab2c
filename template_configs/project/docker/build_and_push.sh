#!/usr/bin/env bash
# Build the training image on this project's base image (docker/images.env), tag it with the git
# commit, log in to ECR and push it:
#
#   image="$(docker/build_and_push.sh)"    # stdout is the pushed image URI, nothing else
#
# ECR_REPOSITORY_URI (<account>.dkr.ecr.<region>.amazonaws.com/<repository>) comes from the
# environment, or from .env where the environment is silent. Needs docker, the AWS CLI v2, and
# credentials allowed to push to that repository (PROJECT.md: "AWS setup").
set -euo pipefail
cd "$(dirname "$0")/.."

repository="${ECR_REPOSITORY_URI:-}"
if [ -z "$repository" ] && [ -f .env ]; then
    repository="$(sed -n 's/^ECR_REPOSITORY_URI=//p' .env | tail -n 1 | tr -d "\"' ")"
fi
registry="${repository%%/*}"
region="$(echo "$registry" | cut -s -d. -f4)"
if [ -z "$repository" ] || [ "$registry" = "$repository" ] || [ -z "$region" ]; then
    echo "error: ECR_REPOSITORY_URI is '${repository}', not <account>.dkr.ecr.<region>.amazonaws.com/<repository>: set it in .env or the environment" >&2
    exit 1
fi

# The commit names the image; a build with uncommitted changes says so in its tag.
tag="$(git rev-parse HEAD)"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    tag="$tag-dirty"
fi
image="$repository:$tag"

# TRAIN_BASE_IMAGE: CUDA or not, as the project was baked (--torch).
# shellcheck source=docker/images.env
. docker/images.env
docker build --build-arg "BASE_IMAGE=$TRAIN_BASE_IMAGE" --tag "$image" . >&2
aws ecr get-login-password --region "$region" \
    | docker login --username AWS --password-stdin "$registry" >&2
docker push "$image" >&2
echo "$image"
