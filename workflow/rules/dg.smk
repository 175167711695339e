# Stage 5: Discriminator Guidance (Table 3). The discriminator of a model is trained on the model's
# first sample set at its Table 3 sampler setting (the generation job's output, never regenerated),
# with independent perturbation noise ("plain") or AOT-paired noise ("aot"); then guided sample sets
# (dg<mode>-<sampler>/rep<r>.npz, disjoint seeds as for every FID) are generated and measured.


def dg_base_key(model):
    part = "cond" if MODELS[model]["cond"] else "uncond"
    return best_key(model) if model == config["tables"][part]["aot"] else default_key()


def dg_feature_inputs():
    fe = DG.get("feature_extractor", "scratch")
    return {} if fe == "scratch" else {"feature_extractor": fe}


DG_CLASSIFIER_FOLDER = "https://drive.google.com/drive/folders/1gb68C13-QOt8yA6ZnnS6G5pVIlPO7j_y"

if DG.get("feature_extractor", "scratch") != "scratch":

    localrules:
        fetch_dg_classifier,

    rule fetch_dg_classifier:
        # DG publishes its ADM classifier in a Google Drive folder, which has no stable direct URL:
        # place the file by hand (login node), and this job stops with the instructions if it is absent.
        output:
            DG["feature_extractor"],
        shell:
            "echo 'error: DG feature extractor {output} is missing: download 32x32_classifier.pt from "
            "DG's checkpoints/ADM_classifier folder ({DG_CLASSIFIER_FOLDER}) and place it at {output}, "
            "or set dg.feature_extractor: scratch' >&2; exit 1"


rule train_discriminator:
    input:
        data=DATASET,
        samples=lambda wc: sample_path(wc.model, dg_base_key(wc.model), 0),
        **dg_feature_inputs(),
    output:
        f"{R}/dg/{{model}}/{{mode}}/discriminator.pt",
    params:
        outdir=lambda wc: f"{R}/dg/{wc.model}/{wc.mode}",
        cond=lambda wc: str(MODELS[wc.model]["cond"]).lower(),
        aot=lambda wc: "true" if wc.mode == "aot" else "false",
        pool=lambda wc: DG["pool_size"]["cond" if MODELS[wc.model]["cond"] else "uncond"],
        fe=DG.get("feature_extractor", "scratch"),
    log:
        f"{LOGS}/train_discriminator/{{model}}-{{mode}}.log",
    benchmark:
        f"{BENCH}/train_discriminator/{{model}}-{{mode}}.tsv"
    threads: threads_for("train_discriminator")
    resources:
        **resources_for("train_discriminator", 720, 32000),
    conda:
        ENV
    shell:
        "{PY} -m aot.dg train --data {input.data:q} --samples {input.samples:q} --out {params.outdir:q} "
        "--cond {params.cond} --aot {params.aot} --pool-size {params.pool} --feature-extractor {params.fe:q} "
        "--num-images {DG[collect_images]} --batch {DG[batch]} --epochs {DG[epochs]} --lr {DG[lr]} "
        "--weight-decay {DG[weight_decay]} --device {DEVICE} --threads {threads} >> {log:q} 2>&1"


rule generate_dg:
    input:
        network=lambda wc: network_path(wc.model),
        discriminator=f"{R}/dg/{{model}}/{{mode}}/discriminator.pt",
        **dg_feature_inputs(),
    output:
        f"{R}/samples/{{model}}/dg{{mode}}-{{solver}}-n{{steps}}-rho{{rho}}/rep{{rep}}.npz",
    params:
        seeds=lambda wc: seeds_for(wc.rep),
        sigma_min=SAMPLING.get("sigma_min", 0.002),
        sigma_max=SAMPLING.get("sigma_max", 80),
        batch=config["generate"].get("batch", 256),
        shard=config["generate"].get("shard_size", 1000),
        boosting=str(DG.get("boosting", False)).lower(),
    log:
        f"{LOGS}/generate_dg/{{model}}/dg{{mode}}-{{solver}}-n{{steps}}-rho{{rho}}-rep{{rep}}.log",
    benchmark:
        f"{BENCH}/generate_dg/{{model}}/dg{{mode}}-{{solver}}-n{{steps}}-rho{{rho}}-rep{{rep}}.tsv"
    threads: threads_for("generate_dg")
    resources:
        **resources_for("generate_dg", 480, 16000),
    conda:
        ENV
    shell:
        "{PY} -m aot.dg generate --network {input.network:q} --discriminator {input.discriminator:q} "
        "--model-name {wildcards.model:q} --seeds {params.seeds} --out {output:q} --solver {wildcards.solver} "
        "--steps {wildcards.steps} --rho {wildcards.rho} --sigma-min {params.sigma_min} "
        "--sigma-max {params.sigma_max} --dg-weight-1st-order {DG[dg_weight_1st_order]} "
        "--dg-weight-2nd-order {DG[dg_weight_2nd_order]} --time-min {DG[time_min]} --time-max {DG[time_max]} "
        "--boosting {params.boosting} --batch {params.batch} --shard-size {params.shard} --device {DEVICE} "
        "--threads {threads} > {log:q} 2>&1"
