#!/usr/bin/env bash
# Build an image on this project's base image (docker/images.env), tag it with the git commit,
# log in to ECR and push it:
#
#   image="$(docker/build_and_push.sh)"          # the training image (Dockerfile)
#   image="$(docker/build_and_push.sh serve)"    # the serving image (Dockerfile.serve): <commit>-serve
#
# stdout is the pushed image URI, nothing else. Both go to one repository, told apart by the tag.
# ECR_REPOSITORY_URI (<account>.dkr.ecr.<region>.amazonaws.com/<repository>) comes from the
# environment, or from .env where the environment is silent. Needs docker, the AWS CLI v2, and
# credentials allowed to push to that repository (PROJECT.md: "AWS setup").
set -euo pipefail
cd "$(dirname "$0")/.."

image_kind="${1:-train}"
if [ "$image_kind" != "train" ] && [ "$image_kind" != "serve" ]; then
    echo "error: build_and_push.sh takes train (the default) or serve, not '$image_kind'" >&2
    exit 1
fi

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

# TRAIN_BASE_IMAGE and SERVE_BASE_IMAGE: CUDA or not, as the project was baked (--torch).
# shellcheck source=docker/images.env
. docker/images.env
if [ "$image_kind" = "serve" ]; then
    image="$repository:$tag-serve"
    docker build --file Dockerfile.serve --build-arg "BASE_IMAGE=$SERVE_BASE_IMAGE" --tag "$image" . >&2
else
    image="$repository:$tag"
    docker build --build-arg "BASE_IMAGE=$TRAIN_BASE_IMAGE" --tag "$image" . >&2
fi
aws ecr get-login-password --region "$region" \
    | docker login --username AWS --password-stdin "$registry" >&2
docker push "$image" >&2
echo "$image"
