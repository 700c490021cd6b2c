# neuroharmony-bids container image
#
# Build (VERSION defaults to the `version` file's content; the build stops if they differ):
#
#     docker build -t ghcr.io/neuroharmony-bids/neuroharmony-bids:"$(cat version)" .
#
#     # optional provenance labels
#     docker build --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#                  --build-arg VCS_REF="$(git rev-parse --short HEAD)" \
#                  -t ghcr.io/neuroharmony-bids/neuroharmony-bids:"$(cat version)" .
#
# Layout of the final image
#   nipreps/mriqc:<MRIQC_VERSION>   the official MRIQC image: MRIQC and its own Python 3.11 in
#                                   /opt/conda (micromamba at /bin/micromamba), ANTs, AFNI, the
#                                   SynthStrip model, and TemplateFlow in /templateflow
#                                   (TEMPLATEFLOW_HOME, with the MNI152NLin2009cAsym files
#                                   MRIQC's T1w workflow reads, cached by the MRIQC build).
#   /opt/freesurfer                 FreeSurfer 7.3.2 (recon-all + stats tools), trimmed with
#                                   docker/freesurfer-7.3.2-exclude.txt. No license inside.
#   /opt/neuroharmony/env           Python 3.11 + requirements.lock (runtime only: no test tools,
#                                   no second MRIQC or torch) + this package. A separate
#                                   environment because the MRIQC image's Python pins its
#                                   scientific stack (scipy 1.11, scikit-learn 1.4) for MRIQC,
#                                   and the lock needs newer releases; installing ours there
#                                   would change MRIQC's dependencies. It is NOT on PATH, so
#                                   `python` and `mriqc` stay the MRIQC image's own.
#   /opt/neuroharmony/run.py        the BIDS-App entry point; /version holds the version.
#                                   neuroharmony-bids, neuroharmony and bids-validator-deno are
#                                   linked into /usr/local/bin.
#
# Run time: as root by default with a shared, world-writable HOME (/home/neuroharmony), as
# fMRIPrep, sMRIPrep and MRIQC do, so `docker run IMAGE /data /out participant` can write to
# host-owned folders; `-u $(id -u):$(id -g)` works too (outputs then belong to you). Caches
# point at /tmp, so `--read-only --tmpfs /tmp` works; no network is needed.
# FreeSurfer license: `--fs-license-file` or FS_LICENSE at run time, never baked in.

ARG MRIQC_VERSION=24.0.2

# --------------------------------------------------------------------------------------------
# FreeSurfer download stage (keeps curl/tar work out of the final image's history)
FROM nipreps/mriqc:${MRIQC_VERSION} AS freesurfer
ARG FREESURFER_VERSION=7.3.2
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY docker/freesurfer-${FREESURFER_VERSION}-exclude.txt /usr/local/etc/freesurfer-exclude.txt
RUN mkdir -p /opt/fs-download \
    && curl -fsSL --retry 5 \
        "https://surfer.nmr.mgh.harvard.edu/pub/dist/freesurfer/${FREESURFER_VERSION}/freesurfer-linux-ubuntu22_amd64-${FREESURFER_VERSION}.tar.gz" \
     | tar -xz --no-same-owner -C /opt/fs-download \
        --exclude-from=/usr/local/etc/freesurfer-exclude.txt \
    && test -x /opt/fs-download/freesurfer/bin/recon-all \
    && test -x /opt/fs-download/freesurfer/bin/mri_segstats \
    && test -x /opt/fs-download/freesurfer/bin/asegstats2table

# --------------------------------------------------------------------------------------------
# Final image
FROM nipreps/mriqc:${MRIQC_VERSION}
ARG MRIQC_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# FreeSurfer's run-time needs that the MRIQC image lacks (tcsh and libgomp1 are already there).
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        bc \
        lsb-release \
        netbase \
        tcsh \
        time \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/tmp/*

# FreeSurfer 7.3.2 (merged into /opt/freesurfer, which keeps MRIQC's models/synthstrip.1.pt).
# PATH: the MRIQC image's /opt/conda/bin stays first and FreeSurfer comes after it, the order
# fMRIPrep uses, so `python` and `mriqc` are MRIQC's, and FreeSurfer's tools shadow the system's.
COPY --from=freesurfer /opt/fs-download/freesurfer /opt/freesurfer
ENV FREESURFER_HOME="/opt/freesurfer" \
    OS="Linux" \
    FS_OVERRIDE=0 \
    FIX_VERTEX_AREA="" \
    FSF_OUTPUT_FORMAT="nii.gz"
ENV SUBJECTS_DIR="$FREESURFER_HOME/subjects" \
    FUNCTIONALS_DIR="$FREESURFER_HOME/sessions" \
    MNI_DIR="$FREESURFER_HOME/mni" \
    LOCAL_DIR="$FREESURFER_HOME/local" \
    MINC_BIN_DIR="$FREESURFER_HOME/mni/bin" \
    MINC_LIB_DIR="$FREESURFER_HOME/mni/lib" \
    MNI_DATAPATH="$FREESURFER_HOME/mni/data"
ENV PERL5LIB="$MINC_LIB_DIR/perl5/5.8.5" \
    MNI_PERL5LIB="$MINC_LIB_DIR/perl5/5.8.5" \
    PATH="/opt/conda/bin:$FREESURFER_HOME/bin:$MINC_BIN_DIR:$PATH"

# Python 3.11 environment for neuroharmony-bids (conda-forge, through the image's micromamba).
RUN micromamba create -y -q -p /opt/neuroharmony/env -c conda-forge --override-channels \
        python=3.11.7 pip=24.0 \
    && micromamba clean -afy \
    && rm -rf /root/.cache

# The runtime lock first: this layer is rebuilt only when requirements.lock changes. Only the
# runtime: test tools (requirements-test.lock) and MRIQC/torch (requirements-mriqc.lock: the
# base image has them) stay out. pip and setuptools come from the lock too.
COPY requirements.lock /tmp/requirements.lock
RUN /opt/neuroharmony/env/bin/python -m pip install --no-cache-dir \
        "$(grep -m1 '^pip==' /tmp/requirements.lock)" \
    && /opt/neuroharmony/env/bin/python -m pip install --no-cache-dir -r /tmp/requirements.lock \
    && rm -f /tmp/requirements.lock

# TemplateFlow: the MRIQC image's own cache (TEMPLATEFLOW_HOME=/templateflow), read-only and
# offline at run time. Stop here if a file MRIQC's T1w workflow reads is not in it, or if any
# file there is unreadable for a `-u` user (checked, not chmod-ed: that would copy the cache).
ENV TEMPLATEFLOW_HOME="/templateflow" \
    TEMPLATEFLOW_AUTOUPDATE="0"
RUN tpl="$TEMPLATEFLOW_HOME/tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym" \
    && for suffix in res-01_T1w res-02_T1w res-01_desc-brain_mask res-02_desc-brain_mask \
            res-01_label-CSF_probseg res-01_label-GM_probseg res-01_label-WM_probseg; do \
        test -s "${tpl}_${suffix}.nii.gz" \
            || { echo "TemplateFlow file ${tpl}_${suffix}.nii.gz is missing" >&2; exit 1; }; \
    done \
    && unreadable="$(find "$TEMPLATEFLOW_HOME" ! -perm -a=r -print -quit)" \
    && { test -z "$unreadable" || { echo "$unreadable is not readable by every user" >&2; exit 1; }; }

# Shared HOME, writable whatever `-u` says; every cache under /tmp for `--read-only`.
# (No USER: the image runs as root, like the MRIQC image it starts from.)
RUN mkdir -p /home/neuroharmony \
    && chmod 0777 /home/neuroharmony
ENV HOME="/home/neuroharmony" \
    XDG_CACHE_HOME="/tmp/.cache" \
    MPLCONFIGDIR="/tmp/matplotlib" \
    NIPYPE_CONFIG_DIR="/tmp/.nipype" \
    MRIQC_CACHE_PATH="/tmp/.cache/mriqc" \
    NIPYPE_NO_ET="1" \
    NO_ET="1" \
    MIGAS_OPTOUT="1" \
    PYTHONDONTWRITEBYTECODE="1" \
    PYTHONNOUSERSITE="1" \
    MKL_NUM_THREADS="1" \
    OMP_NUM_THREADS="1" \
    IS_DOCKER_8395080871="1"

# The package itself (small layer; source edits only rebuild from here on).
# README.md* : pyproject's long description, copied when present (a wildcard may match nothing).
COPY pyproject.toml version README.md* /tmp/src/
COPY neuroharmony_bids /tmp/src/neuroharmony_bids
RUN /opt/neuroharmony/env/bin/python -m pip install --no-cache-dir --no-deps --no-build-isolation /tmp/src \
    && rm -rf /tmp/src \
    && /opt/neuroharmony/env/bin/python -c "import ssl, sqlite3, ctypes, numpy, scipy, sklearn, \
pandas, pyarrow, matplotlib, nibabel, nipype, bids, neuroharmony_bids.cli.run" \
    && ln -s /opt/neuroharmony/env/bin/neuroharmony-bids /usr/local/bin/neuroharmony-bids \
    && ln -s /opt/neuroharmony/env/bin/neuroharmony /usr/local/bin/neuroharmony \
    && ln -s /opt/neuroharmony/env/bin/bids-validator-deno /usr/local/bin/bids-validator-deno

# Every program the app runs is on PATH, checked name by name (a missing one fails the build).
RUN missing=""; \
    for tool in recon-all mri_segstats mris_anatomical_stats asegstats2table aparcstats2table \
            mriqc antsRegistration N4BiasFieldCorrection 3dFWHMx \
            bids-validator-deno neuroharmony-bids neuroharmony; do \
        command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; \
    done; \
    if [ -n "$missing" ]; then echo "not on PATH:$missing" >&2; exit 1; fi

# Smoke tests: FreeSurfer and MRIQC programs really start (no license needed for these).
RUN recon-all -version \
    && mri_segstats --version \
    && mriqc --version

COPY version /version
COPY run.py /opt/neuroharmony/run.py
# VERSION's default is the `version` file's content (tests/test_packaging.py keeps them equal);
# the check below stops a build whose VERSION differs from the file copied in.
ARG VERSION=0.1.0
RUN test "$(cat /version)" = "${VERSION}" \
        || { echo "VERSION build arg (${VERSION}) differs from the version file ($(cat /version))" >&2; exit 1; } \
    && sed -i '1s|^#!.*|#!/opt/neuroharmony/env/bin/python|' /opt/neuroharmony/run.py \
    && chmod 0755 /opt/neuroharmony/run.py \
    && /opt/neuroharmony/run.py --version

# Recorded as GeneratedBy.Container in every output's dataset_description.json.
ENV NEUROHARMONY_CONTAINER="docker://ghcr.io/neuroharmony-bids/neuroharmony-bids:${VERSION}"

WORKDIR /tmp
ENTRYPOINT ["/opt/neuroharmony/run.py"]

ARG BUILD_DATE
ARG VCS_REF
LABEL org.opencontainers.image.title="neuroharmony-bids" \
      org.opencontainers.image.description="BIDS App: single-scan harmonization of FreeSurfer regional volumes from MRIQC image quality metrics (MRIQC ${MRIQC_VERSION}, FreeSurfer 7.3.2 inside)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/neuroharmony-bids/neuroharmony-bids" \
      org.opencontainers.image.url="https://github.com/neuroharmony-bids/neuroharmony-bids" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="docker.io/nipreps/mriqc:${MRIQC_VERSION}"
