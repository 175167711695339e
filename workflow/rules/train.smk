# Stage 2: one network per model, trained here (EDM or EDM-AOT) or imported from an official EDM
# pickle. Either way the rest of the pipeline reads our network file, models/<name>/network-final.pt.
# Training resumes from models/<name>/training-state.pt: a job killed by Slurm's time limit (with
# --signal, it saves its state and exits 75) is retried and continues where it stopped.

TRAINED = [m["name"] for m in config["models"] if m.get("source", "train") == "train"]
IMPORTED = [m["name"] for m in config["models"] if m.get("source", "train") == "edm-pickle"]


def _names_regex(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def train_args(wildcards):
    m = MODELS[wildcards.model]
    t = train_settings(wildcards.model)
    args = [
        "--model-name", m["name"], "--cond", str(m["cond"]).lower(), "--aot", str(m["aot"]).lower(),
        "--arch", t["arch"], "--precond", t["precond"], "--duration", t["duration"], "--batch", t["batch"],
        "--batch-gpu", t["batch_gpu"], "--pool-size", t["pool_size"], "--cost", t["cost"], "--lr", t["lr"],
        "--lr-rampup", t["lr_rampup"], "--ema", t["ema"], "--ema-rampup", t["ema_rampup"],
        "--dropout", t["dropout"], "--augment", t["augment"], "--xflip", str(t["xflip"]).lower(),
        "--tick", t["tick"], "--snap", t["snap"], "--dump", t["dump"], "--seed", t["seed"], "--device", DEVICE,
    ]
    ov = t.get("arch_overrides", {})
    if "cbase" in ov:
        args += ["--cbase", ov["cbase"]]
    if "cres" in ov:
        args += ["--cres", ",".join(str(c) for c in ov["cres"])]
    if "num_blocks" in ov:
        args += ["--num-blocks", ov["num_blocks"]]
    if "attn" in ov:
        args += ["--attn", ",".join(str(c) for c in ov["attn"])]
    if t.get("fast"):
        args += ["--bf16", "true", "--tf32", "true", "--channels-last", "true", "--compile", "true"]
    return " ".join(q(a) for a in args) + (" " + t["extra_args"] if t.get("extra_args") else "")


def train_launcher(wildcards):
    gpus = int(resource("train", "gpus", 0))
    if gpus > 1:
        return f"{PY} -m torch.distributed.run --standalone --nproc-per-node {gpus} -m aot.train"
    return f"{PY} -m aot.train"




rule train:
    input:
        data=DATASET,
    output:
        network=f"{R}/models/{{model}}/network-final.pt",
    wildcard_constraints:
        model=_names_regex(TRAINED),
    params:
        outdir=lambda wc: f"{R}/models/{wc.model}",
        args=train_args,
        launcher=train_launcher,
    log:
        f"{LOGS}/train/{{model}}.log",
    benchmark:
        f"{BENCH}/train/{{model}}.tsv"
    threads: threads_for("train")
    resources:
        **resources_for("train", 2880, 64000),
    conda:
        ENV
    shell:
        "{params.launcher} --outdir {params.outdir:q} --data {input.data:q} {params.args} "
        "--threads {threads} >> {log:q} 2>&1"


localrules:
    fetch_edm_pickle,


rule fetch_edm_pickle:
    output:
        network=f"{R}/models/{{model}}/network-final.pt",
    wildcard_constraints:
        model=_names_regex(IMPORTED),
    params:
        url=lambda wc: MODELS[wc.model]["pickle"],
        sha=lambda wc: (f"--sha256 {MODELS[wc.model]['sha256']}" if MODELS[wc.model].get("sha256") else ""),
    log:
        f"{LOGS}/fetch_edm_pickle/{{model}}.log",
    benchmark:
        f"{BENCH}/fetch_edm_pickle/{{model}}.tsv"
    conda:
        ENV
    shell:
        "{PY} -m aot.checkpoints import-edm {params.url:q} {output.network:q} {params.sha} "
        "--model-name {wildcards.model:q} > {log:q} 2>&1"
