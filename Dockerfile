# neuroharmony-bids container image
#
# Build (the VERSION build argument must equal the `version` file; the build fails otherwise):
#
#     docker build --build-arg VERSION="$(cat version)" \
#                  --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#                  --build-arg VCS_REF="$(git rev-parse --short HEAD)" \
#                  -t ghcr.io/neuroharmony-bids/neuroharmony-bids:"$(cat version)" .
#
# Layout of the final image
#   nipreps/mriqc:<MRIQC_VERSION>   the official MRIQC image, the same MRIQC version that
#                                   requirements.lock pins: MRIQC in /opt/conda (its own
#                                   Python), ANTs, AFNI, the SynthStrip model.
#   /opt/freesurfer                 FreeSurfer 7.3.2 (recon-all + stats tools), trimmed with
#                                   docker/freesurfer-7.3.2-exclude.txt. No license inside.
#   /opt/neuroharmony/env           Python 3.11 + requirements.lock + this package. A separate
#                                   environment because the lock needs Python >= 3.11 and the
#                                   MRIQC image's Python is older; it is NOT first on PATH, so
#                                   `mriqc` stays the official /opt/conda/bin/mriqc.
#   /opt/templateflow               TemplateFlow templates MRIQC's anatomical workflow reads,
#                                   fetched at build time (compute nodes need no network).
#   /opt/neuroharmony/run.py        the BIDS-App entry point; /version holds the version.
#                                   neuroharmony-bids, neuroharmony and bids-validator-deno are
#                                   linked into /usr/local/bin.
#
# Run time: non-root user, works with `docker run --read-only --tmpfs /tmp` plus mounted
# output and work directories (every cache points at /tmp), no network needed.
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
USER 0:0

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
    PATH="$FREESURFER_HOME/bin:$MINC_BIN_DIR:$PATH"

# Python 3.11 environment for neuroharmony-bids (conda-forge, through the image's micromamba).
RUN micromamba create -y -q -p /opt/neuroharmony/env -c conda-forge --override-channels \
        python=3.11.7 pip=24.0 setuptools=69.5.1 wheel=0.43.0 \
    && micromamba clean -afy \
    && rm -rf /root/.cache

# The pinned dependencies first: this layer is rebuilt only when requirements.lock changes.
COPY requirements.lock /tmp/requirements.lock
RUN /opt/neuroharmony/env/bin/python -m pip install --no-cache-dir \
        -r /tmp/requirements.lock \
        --extra-index-url https://download.pytorch.org/whl/cpu \
    && rm -f /tmp/requirements.lock

# TemplateFlow: the MNI152NLin2009cAsym files MRIQC's anatomical (T1w) workflow reads, in a
# read-only location shared by MRIQC's Python and ours. Offline at run time.
ENV TEMPLATEFLOW_HOME="/opt/templateflow" \
    TEMPLATEFLOW_AUTOUPDATE="0"
RUN /opt/neuroharmony/env/bin/python -c "\
from templateflow import api as tf; \
tpl = 'MNI152NLin2009cAsym'; \
as_list = lambda x: x if isinstance(x, list) else [x]; \
got = as_list(tf.get(tpl, resolution=[1, 2], suffix='T1w', desc=None)); \
got += as_list(tf.get(tpl, resolution=[1, 2], suffix='mask', desc=['brain', 'head'])); \
got += as_list(tf.get(tpl, resolution=1, suffix='probseg', label=['CSF', 'GM', 'WM'])); \
names = {p.name for p in got if p.is_file()}; \
need = {'tpl-' + tpl + '_res-02_T1w.nii.gz', 'tpl-' + tpl + '_res-02_desc-brain_mask.nii.gz'}; \
need |= {'tpl-' + tpl + '_res-01_label-' + k + '_probseg.nii.gz' for k in ('CSF', 'GM', 'WM')}; \
assert need <= names, sorted(need - names); \
print(len(names), 'TemplateFlow files cached')" \
    && chmod -R a+rX /opt/templateflow

# Non-root user (uid 2000, group users = gid 100). HOME and every cache live under /tmp so
# that `docker run --read-only` works.
RUN useradd -l -M -d /tmp -s /bin/bash -u 2000 -g users neuroharmony
ENV HOME="/tmp" \
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
pandas, matplotlib, nibabel, nipype, bids, templateflow, neuroharmony_bids.cli.run" \
    && ln -s /opt/neuroharmony/env/bin/neuroharmony-bids /usr/local/bin/neuroharmony-bids \
    && ln -s /opt/neuroharmony/env/bin/neuroharmony /usr/local/bin/neuroharmony \
    && ln -s /opt/neuroharmony/env/bin/bids-validator-deno /usr/local/bin/bids-validator-deno

COPY version /version
COPY run.py /opt/neuroharmony/run.py
ARG VERSION
RUN test -n "${VERSION}" || { echo "pass --build-arg VERSION=\$(cat version)" >&2; exit 1; } \
    && test "$(cat /version)" = "${VERSION}" \
        || { echo "VERSION build arg (${VERSION}) differs from the version file ($(cat /version))" >&2; exit 1; } \
    && sed -i '1s|^#!.*|#!/opt/neuroharmony/env/bin/python|' /opt/neuroharmony/run.py \
    && chmod 0755 /opt/neuroharmony/run.py \
    && /opt/neuroharmony/run.py --version \
    && mriqc --version \
    && command -v recon-all mri_segstats mris_anatomical_stats asegstats2table aparcstats2table \
        mriqc antsRegistration N4BiasFieldCorrection 3dFWHMx \
        bids-validator-deno neuroharmony-bids neuroharmony

# Recorded as GeneratedBy.Container in every output's dataset_description.json.
ENV NEUROHARMONY_CONTAINER="docker://ghcr.io/neuroharmony-bids/neuroharmony-bids:${VERSION}"

USER 2000:100
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
