# Stage 4: measurements. FID with clean-fid in legacy_tensorflow mode (the TF-Inception numbers of
# EDM and the paper) against CIFAR-10 training statistics, or, offline, the Frechet distance in the
# feature space of a classifier trained here on the dataset (labelled as such everywhere).
# One FID job and one JSON per sample set. Trajectory diagnostics for Figures 2, 3, 6-9.

FID_CACHE = f"{DOWNLOADS}/clean-fid"


localrules:
    fetch_fid_assets,


rule fetch_fid_assets:
    output:
        f"{FID_CACHE}/assets.json",
    log:
        f"{LOGS}/fetch_fid_assets.log",
    benchmark:
        f"{BENCH}/fetch_fid_assets.tsv"
    conda:
        ENV
    shell:
        "{PY} -m aot.fid fetch-assets --cache-dir {FID_CACHE:q} > {log:q} 2>&1"


rule train_features:
    input:
        data=DATASET,
    output:
        f"{R}/fid/feature-net.pt",
    log:
        f"{LOGS}/train_features.log",
    benchmark:
        f"{BENCH}/train_features.tsv"
    threads: threads_for("train_features")
    resources:
        **resources_for("train_features", 60, 8000),
    conda:
        ENV
    shell:
        "{PY} -m aot.fid train-features --data {input.data:q} --out {output:q} --device {DEVICE} "
        "--threads {threads} > {log:q} 2>&1"


rule reference_stats:
    input:
        data=DATASET,
        **fid_feature_inputs(),
    output:
        reference_path(),
    params:
        features=lambda wc, input: features_arg(input),
        source=("--precomputed cifar10" if FID["reference"] == "precomputed" else ""),
    log:
        f"{LOGS}/reference_stats.log",
    benchmark:
        f"{BENCH}/reference_stats.tsv"
    threads: threads_for("reference_stats")
    resources:
        **resources_for("reference_stats", 60, 16000),
    conda:
        ENV
    shell:
        "{PY} -m aot.fid reference --data {input.data:q} --features {params.features:q} {params.source} "
        "--cache-dir {FID_CACHE:q} --batch {FID[batch]} --device {DEVICE} --threads {threads} "
        "--out {output:q} > {log:q} 2>&1"


rule fid:
    input:
        samples=f"{R}/samples/{{model}}/{{key}}/rep{{rep}}.npz",
        ref=reference_path(),
        **fid_feature_inputs(),
    output:
        f"{R}/fid/{{model}}/{{key}}/rep{{rep}}.json",
    wildcard_constraints:
        key=r"(dg(aot|plain)-)?(heun|euler)-n\d+-rho\d+(\.\d+)?(-churn\d+(\.\d+)?)?",
    params:
        features=lambda wc, input: features_arg(input),
    log:
        f"{LOGS}/fid/{{model}}/{{key}}-rep{{rep}}.log",
    benchmark:
        f"{BENCH}/fid/{{model}}/{{key}}-rep{{rep}}.tsv"
    threads: threads_for("fid")
    resources:
        **resources_for("fid", 60, 16000),
    conda:
        ENV
    shell:
        "{PY} -m aot.fid measure --samples {input.samples:q} --ref {input.ref:q} "
        "--features {params.features:q} --cache-dir {FID_CACHE:q} --repeat {wildcards.rep} "
        "--batch {FID[batch]} --device {DEVICE} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule diagnostics:
    input:
        edm=lambda wc: network_path(config["tables"][wc.part]["edm"]),
        aot=lambda wc: network_path(config["tables"][wc.part]["aot"]),
    output:
        npz=f"{R}/diagnostics/{{part}}-{{solver}}-n{{steps}}-rho{{rho}}.npz",
        json=f"{R}/diagnostics/{{part}}-{{solver}}-n{{steps}}-rho{{rho}}.json",
    params:
        seeds=config["diagnostics"].get("grid_seeds", "0-63"),
    log:
        f"{LOGS}/diagnostics/{{part}}-{{solver}}-n{{steps}}-rho{{rho}}.log",
    benchmark:
        f"{BENCH}/diagnostics/{{part}}-{{solver}}-n{{steps}}-rho{{rho}}.tsv"
    threads: threads_for("diagnostics")
    resources:
        **resources_for("diagnostics", 30, 16000),
    conda:
        ENV
    shell:
        "{PY} -m aot.diagnostics --network {input.edm:q} --network {input.aot:q} --seeds {params.seeds} "
        "--solver {wildcards.solver} --steps {wildcards.steps} --rho {wildcards.rho} --device {DEVICE} "
        "--threads {threads} --out {output.npz:q} > {log:q} 2>&1"
