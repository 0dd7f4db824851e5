"""Every configuration key of lmi_jax, with its default and a one-line comment.

Experiment configs (`configs/*.py`) start from `get_config()` here and override a few keys.
The config is locked after loading, so a misspelt key is an error.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Root PRNG seed; every random stream is split from it.
  config.host_devices = 0  # >0: XLA sees the host CPU as this many devices, which pmap runs side by side (2 on 2 cores: ~14% faster sampling); GPUs are unaffected.

  # --- data ------------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.image_size = 128  # Slices are resized to image_size x image_size.
  data.pixel_mm = 0.0  # >0: slices at this pixel size (mm), centred on the image_size canvas, which must hold the field of view; 0: the longer side spans the canvas.
  data.dataset = "phantom"  # phantom (embedded, no download) | ixi | nifti (generic paired volumes).
  data.root = ""  # Folder of the ixi / nifti volumes (unused by the phantom).
  data.source = "PD"  # Source modality: translated at test time, never seen in training.
  data.target = "T1"  # Target modality: the only one training uses; its grid is the slices' grid.
  data.source_order = (3, 2, 1)  # source_kmeans: the T1w class (1 CSF, 2 GM, 3 WM) of the source's darkest, middle and brightest cluster: T1w (1, 2, 3); T2w and PDw (3, 2, 1), WM<GM<CSF; FLAIR (1, 3, 2), CSF<WM<GM.
  data.source_glob = ""  # nifti: source files under root (wildcards * ?); "" = "*/<source>.nii*".
  data.target_glob = ""  # nifti: target files; what the wildcards match names the subject.
  data.extra_targets = ()  # Globs of target-contrast volumes of other subjects (no source), added to the score model's training slices only (files only).
  data.missing = "error"  # A subject lacking source or target: error | skip (dropped with a warning).
  data.register = False  # Refine the headers' alignment of source to target by rigid MI registration.
  data.seed = 0  # Seed of the subject split, the phantom subjects and registration sampling.
  data.num_train_subjects = 100  # Training subjects (-1: all left after test and val; files only).
  data.num_val_subjects = 10  # Validation subjects, in addition to the training and test ones.
  data.num_test_subjects = 25  # Test subjects.
  data.slices_per_subject = 3  # Axial slices per subject, evenly spread over slice_range.
  data.slice_range = (0.45, 0.6)  # Fractions of the target's z extent (0 inferior, 1 superior) to slice.
  data.slice_select = "range"  # range: spread over slice_range | brain: spread over the slices holding brain (files only).
  data.min_brain_fraction = 0.5  # brain: a slice holds brain if its tissue area is >= this fraction of the largest slice's.
  data.exclude_glob = ""  # nifti: per-subject masks (e.g. "*/GT_W.nii*", tumour) of regions scored apart; "" = none.
  data.p_lo = 0.0  # Percentile of all voxels mapped to 0 (0: the minimum, the background).
  data.p_hi = 99.5  # Percentile of the foreground (Otsu) voxels mapped to 1; above is clipped.
  data.mask = "none"  # none | foreground: zero all but the largest foreground component, holes filled | nonzero: skull-stripped, the brain is the non-zero voxels.
  data.brain_extraction = "auto"  # --input: auto (extract the brain of raw heads when data.mask="nonzero") | on (every scan) | off (refuse heads).
  data.brain_margin_mm = 4.0  # Growth of the registered MNI152 brain mask (mm), chosen on 10 IXI validation heads (bench/brain_extraction.py).
  data.dicom_series = ""  # --input DICOM folder with several series: the description or UID of the one to translate.
  data.phantom = ml_collections.ConfigDict()  # The embedded phantom's subject variation (lmi_jax/data/phantom.py).
  data.phantom.voxel_mm = 1.5  # Isotropic voxel size of the phantom volumes (the anatomy is 1 mm).
  data.phantom.rotation_deg = 5.0  # Largest random head rotation about each axis.
  data.phantom.scale_jitter = 0.05  # Std of the log of the random head scale.
  data.phantom.deform_mm = 2.0  # Std of the smooth random displacement per axis.
  data.phantom.relax_jitter = 0.05  # Std of the log of each tissue's T1 and T2 per subject.
  data.phantom.bias = 0.15  # Std of the log of the smooth multiplicative bias field.
  data.phantom.noise = 0.02  # Rician noise std relative to the brightest tissue signal.

  # --- local mutual information (lmi_jax/lmi.py) ------------------------------
  config.lmi = lmi = ml_collections.ConfigDict()
  lmi.patch_size = 5  # Odd k: MI from the k*k intensity pairs of a patch (authors: 3; 5 chosen on the val split).
  lmi.radius = 1  # Search radius r: shifts s with |s|_inf <= r are tried, the best is kept.
  lmi.num_bins = 16  # Parzen histogram bins, evenly spaced over the normalised range.
  lmi.kernel_sigma = 0.8  # Gaussian Parzen kernel width, in bin spacings.
  lmi.levels = 0  # >0: intensities are scaled to 0..levels and truncated (authors: 255); 0: continuous.
  lmi.normalize = "minmax"  # Per-image intensity map before binning: none | minmax | percentile | rank (chosen on val).
  lmi.p_lo = 1.0  # Lower percentile clipped to 0 by `percentile` normalisation.
  lmi.p_hi = 99.0  # Upper percentile clipped to 1 by `percentile` normalisation.
  lmi.nmi = True  # Normalised MI 2*MI/(H_a+H_b) (in [0, ~1]) instead of MI in bits.
  lmi.padding = "reflect"  # Border handling of patches and shifts: zero | edge | reflect.
  lmi.row_chunk = 0  # Rows per chunk to bound memory (0: chosen from the image size).
  lmi.reference_map = "flat_stretch"  # Source map before it becomes the reference at translation: none | stretch | equalize | flat_stretch | flat_equalize (lmi_jax/reference_map.py; chosen on the val contrast sweep).
  lmi.flatten_sigma = 0.094  # Bias-field Gaussian of the flat_* maps, as a fraction of the image width (6 px at 64).
  lmi.features = ("cross", "self")  # Conditioning channels fed to the score network, in order.

  # --- score model (lmi_jax/models) -----------------------------------------
  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnpp"  # Architecture, a key of lmi_jax.models.MODELS.
  model.nf = 64  # Base width; level i has nf * ch_mult[i] channels (64: the authors' width).
  model.ch_mult = (1, 2, 2, 2)  # Width multiplier per resolution level; the map halves between levels.
  model.num_res_blocks = 2  # Residual blocks per level in the encoder (the decoder has one more).
  model.attn_resolutions = (16,)  # Feature-map sizes (pixels) that get self-attention.
  model.mid_attention = True  # Self-attention at the bottleneck; False with attn_resolutions=(): fully convolutional, so it trains on crops and runs on any size.
  model.dropout = 0.1  # Dropout rate inside residual blocks while training.
  model.resblock_type = "biggan"  # biggan: resampling inside residual blocks (9.9M params at 128px) | ddpm: separate layers (8.8M, like the authors' UNet).
  model.resamp_with_conv = True  # ddpm blocks only: a 3x3 conv goes with each up/down-sampling.
  model.fir = True  # FIR (StyleGAN2) filtered resampling instead of nearest / 2x2 mean.
  model.fir_kernel = (1, 3, 3, 1)  # 1-D FIR taps; the 2-D filter is their outer product.
  model.skip_rescale = True  # Residual sums divided by sqrt(2) to keep activations at unit scale.
  model.progressive = "output_skip"  # Output pyramid: none | output_skip | residual.
  model.progressive_input = "input_skip"  # Input pyramid: none | input_skip | residual.
  model.progressive_combine = "sum"  # How input_skip merges the pyramid into the encoder: sum | cat.
  model.embedding_type = "fourier"  # Noise-level embedding: fourier (of log std(t)) | positional (of 999 t).
  model.fourier_scale = 16.0  # Std of the random Fourier frequencies.
  model.init_scale = 0.0  # Init scale of layers closing a residual branch and of the output (0: zero).
  model.conditional = True  # Condition the network on the noise level.
  model.host_kernel_grad = True  # CPU only: convolution kernel gradients by OpenBLAS in a host callback (training ~1.4x faster; off: XLA's own, e.g. to take second derivatives).
  model.scale_by_sigma = True  # Feeding when preconditioning is none: score = network output / std(t), so the output has unit scale.
  model.preconditioning = "none"  # none: the network sees 2 x_t - 1 | edm: Karras et al. (2022)'s c_in / c_skip / c_out, it predicts the clean image (lmi_jax/models/score.py).

  # --- SDE (lmi_jax/sde.py) --------------------------------------------------
  config.sde = sde = ml_collections.ConfigDict()
  sde.type = "ve"  # ve: the paper's Eq. 3 | vp: the DDPM schedule of the authors' code.
  sde.sigma_min = 0.01  # VE: noise std at t = 0 (the data carry it, as in Song et al.).
  sde.sigma_max = 50.0  # VE: prior std; Song's rule ~ largest distance between two [0,1] training slices (<= 128 at 128px).
  sde.beta_min = 0.1  # VP: beta(0); 1e-4 per step over 1000 steps, as the authors.
  sde.beta_max = 20.0  # VP: beta(1); 0.02 per step over 1000 steps, as the authors.

  # --- training (lmi_jax/train.py) -------------------------------------------
  config.training = training = ml_collections.ConfigDict()
  training.method = "score"  # What --mode=train trains: score (the diffusion model) | cyclegan | stylegan | supervised (lmi_jax/baselines).
  training.batch_size = 4  # Global batch over every device of every host; must divide by their count (the authors: 4).
  training.num_steps = 300_000  # Optimisation steps (the paper: 300K iterations).
  training.lr = 3e-4  # Adam learning rate (the paper); betas (0.9, 0.999) as the authors.
  training.warmup_steps = 5000  # Linear learning-rate warm-up from lr / warmup_steps to lr (0: none).
  training.grad_clip = 1.0  # Gradients are clipped to this global norm (the authors: 1.0; 0: off).
  training.ema_decay = 0.9999  # Decay of the parameters' EMA that sampling uses (authors: 0.9999), warmed up as min(decay, (1+step)/(10+step)).
  training.eps = 1e-5  # Smallest diffusion time of the loss: t ~ U(eps, 1).
  training.weighting = "dsm"  # Noise levels and weights of the loss: dsm (t ~ U(eps, 1), weight std^2: Eq. 2) | edm (log-normal levels, EDM's weights; lmi_jax/losses.py).
  training.edm_p_mean = -1.2  # edm: mean of ln sigma, sigma the noise std of images in [-1, 1] (EDM: -1.2).
  training.edm_p_std = 1.2  # edm: std of ln sigma (EDM: 1.2).
  training.p_uncond = 0.1  # Conditioning dropout: chance that an example's LMI features become the null (-1).
  training.cond_aug = 0.0  # Chance that an example's LMI reference is a random remap of its target plus noise, not the target (0: the paper; lmi_jax/losses.py).
  training.cond_aug_knots = 5  # Knots of that random piecewise-linear intensity curve, evenly spaced over [0, 1].
  training.cond_aug_noise = 0.25  # Largest noise std added to the remapped reference (log-uniform down to 1/100 of it).
  training.init_from = ""  # A shipped model folder (ema_params.msgpack, e.g. checkpoints/phantom_pd2t1) a fresh run starts from (fine-tuning); "": random initialisation.
  training.crop_size = 0  # >0: the score model trains on crops of this size centred on random brain pixels (a fully convolutional model: model.mid_attention=False, attn_resolutions=()); 0: whole slices.
  training.hflip = True  # Random horizontal flips of the training slices (the authors' blur is left out).
  training.prefetch = 2  # Batches put on the devices ahead of the step that uses them.
  training.log_every = 100  # Steps between metric log lines and TensorBoard scalars.
  training.checkpoint_every = 5000  # Steps between checkpoints in workdir/checkpoints (one more at the end).
  training.max_to_keep = 3  # Checkpoints kept; older ones are deleted.
  training.time_limit_min = 0.0  # >0: stop with a checkpoint once the loop has run this many minutes (checked after every step; at log steps when several hosts train); a rerun resumes.
  training.sample_every = 10_000  # Steps between sample grids in workdir/samples and TensorBoard (0: none).
  training.sample_steps = 100  # Reverse-SDE steps of those preview samples.
  training.num_samples = 4  # Training slices in the grid, each with an LMI-conditioned and an unconditional sample.
  training.coordinator_address = ""  # Multi-host: host:port of process 0 (needed when num_processes > 1).
  training.num_processes = 1  # Multi-host: hosts taking part; each feeds batch_size / num_processes slices.
  training.process_id = 0  # Multi-host: this host's index in [0, num_processes).

  # --- sampling / translation (lmi_jax/sampling.py) ---------------------------
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "em"  # em: Euler-Maruyama, the paper's Eq. 3 | heun: EDM's ODE | churn: EDM's stochastic | dpm2m: DPM-Solver++(2M).
  sampling.num_steps = 1000  # em: Euler-Maruyama steps of the reverse SDE (the authors: 1000); NFE = steps x (1 + corrector_steps) + denoise.
  sampling.nfe = 35  # heun / churn / dpm2m: network evaluations per sample (heun, churn: odd; 2 per noise level, 1 for the last).
  sampling.rho = 7.0  # heun / churn / dpm2m: noise levels uniform in sigma^(1/rho) (EDM: 7).
  sampling.churn = 0.0  # churn: EDM's S_churn, how much noise is re-added before each move (0: the ODE).
  sampling.s_noise = 1.0  # churn: EDM's S_noise, scale of the re-added noise.
  sampling.corrector_steps = 0  # em: Langevin corrector moves before each step (0: plain Eq. 3).
  sampling.snr = 0.16  # Langevin corrector signal-to-noise ratio (Song et al.).
  sampling.eps = 1e-3  # Last time of the reverse SDE; the score is singular at t = 0.
  sampling.denoise = True  # em: a final Tweedie step E[x(0) | x(eps)] removes the noise left at eps (the others always end so).
  sampling.sdedit_t0 = 0.4  # SDEdit start time (the authors: step 400 of 1000; for vp signal 0.44, noise 0.90); it takes that share of the steps / NFE.
  sampling.guidance_scale = 1.0  # Strength of the LMI guidance in translation.
  sampling.seed = 0  # Sampling noise: key = fold_in(key(config.seed), sampling.seed); change it to redraw.
  sampling.shared_noise = False  # Every slice of a call sampled with the same noise (neighbouring slices of a volume then agree); False: noise of its own per slice.
  sampling.batch_size = 8  # Slices translated per jitted call, split over the local devices.
  sampling.pretrained = ""  # Shipped model folder used when the workdir has no checkpoint ("": none).
  sampling.faint_below = 4.0  # lmi uses the shipped folder's faint/ model (trained with cond_aug) for sources of structure score below this (0: never).
  sampling.lowres_model = ""  # A shipped low-resolution model folder whose translation lmi starts from and makes full resolution (lmi_jax/multiscale.py); "": lmi samples from the prior.
  sampling.lowres_refine = "diffusion"  # How that translation becomes full resolution: diffusion (noised to lowres_t0, then lmi with this model) | guided (guided filter by the source) | none (enlarged).
  sampling.lowres_samples = 1  # Draws of the low-resolution translation averaged before it is made full resolution (each costs its sampler's NFE at low resolution).
  sampling.lowres_sampler = ""  # method:nfe of the low-resolution draws, e.g. dpm2m:15 ("": the sampler of that model's own config).
  sampling.lowres_t0 = 0.4  # diffusion: the time its enlarged translation is noised to (VE sigma_min (sigma_max / sigma_min)^t0).
  sampling.guided_radius = 4  # guided: window radius in pixels.
  sampling.guided_eps = 0.01  # guided: ridge on the window's linear map (in squared intensity units; larger is smoother).
  sampling.finish_radius = 0  # >0: lmi's last step, a guided filter (He et al. 2013) of its translation by the source with this window radius in pixels: the sampler's texture averaged where the source is flat, the source's edges followed where not (0: none).
  sampling.finish_eps = 0.01  # finish: ridge on the window's linear map, the source variance below which it averages (squared intensity units).
  sampling.regress_on_source = False  # True: lmi's very last step replaces its translation inside the brain by one regression of it on the source's local features, fitted per stack of slices (lmi_jax/local_regression.py; zero-shot: the target is the translation itself).
  sampling.scan_segmenter = "model"  # How --mode=sample --input segments a translated scan: model (the model's K-means, fitted on target slices) | joint (a K-means of translation and source together per scan, named by the translation; lmi_jax/segmentation.py).
  sampling.faint_reference_map = ""  # lmi.reference_map of the sources the faint/ model translates ("": lmi.reference_map; flat_equalize: more Dice at faint contrast, less with noise).

  # --- evaluation (lmi_jax/evaluation.py) -------------------------------------
  config.eval = evaluation = ml_collections.ConfigDict()
  evaluation.kmeans_clusters = 3  # Tissue classes of the K-means segmenter (3: CSF/GM/WM; the paper's text says 5).
  evaluation.paper_clusters = 5  # K-means clusters of the "Dice (paper protocol)" column: over the whole slice, background included (0: no column).
  evaluation.data_range = 1.0  # Intensity span that PSNR and SSIM are computed with (slices are in [0, 1]).
  evaluation.background_threshold = 0.05  # Pixels <= this are background (label 0) and are not clustered.
  evaluation.kmeans_max_pixels = 200_000  # Foreground pixels sampled (seeded) from the target train slices to fit K-means.
  evaluation.kmeans_n_init = 10  # K-means restarts; the lowest-inertia fit is kept.
  evaluation.methods = ("lmi", "sdedit", "histmatch", "identity")  # Translation methods compared (keys of translate.METHODS).
  evaluation.split = "test"  # Split translated by --mode=sample/eval: test, or val for choices made before testing.
  evaluation.max_slices = 0  # Translate only the first max_slices slices of the split (0: all).

  # --- few-shot CycleGAN baseline (lmi_jax/baselines/cyclegan.py) ----------------
  config.cyclegan = cyclegan = ml_collections.ConfigDict()
  cyclegan.source_fraction = 0.11  # Share of the training subjects whose source slices it sees (the paper: about 11%); all target slices are seen.
  cyclegan.generator_features = 16  # k of the ResNet generators (c7s1-k, d2k, d4k, R4k, u2k, uk; the original: 64).
  cyclegan.generator_blocks = 6  # Residual blocks of the generators (the original: 6 at 128 px, 9 at 256 px).
  cyclegan.discriminator_features = 32  # Channels of the PatchGAN's first layer, doubled per layer up to 8x (the original: 64).
  cyclegan.discriminator_layers = 2  # Stride-2 PatchGAN layers: 2 -> 34 px receptive field (64 px slices), 3 -> the original's 70 px.
  cyclegan.batch_size = 1  # Source and target slices per step, drawn independently (the original: 1).
  cyclegan.num_steps = 3500  # Steps; the learning rate is constant for the first half and decays linearly to 0 over the second.
  cyclegan.lr = 2e-4  # Adam learning rate of generators and discriminators (betas 0.5, 0.999).
  cyclegan.cycle_weight = 10.0  # Weight of the cycle-consistency L1 losses (lambda).
  cyclegan.identity_weight = 0.5  # Identity L1 loss weight as a fraction of cycle_weight (0.5: 0.5 lambda).
  cyclegan.pool_size = 50  # Earlier fakes kept per domain for the discriminators (0: none).
  cyclegan.hflip = True  # Random horizontal flips of the training slices.
  cyclegan.log_every = 50  # Steps between metric log lines and TensorBoard scalars.
  cyclegan.checkpoint_every = 250  # Steps between checkpoints in workdir/cyclegan/checkpoints (one more at the end).
  cyclegan.preview_every = 500  # Steps between previews in workdir/cyclegan (0: only at the end).
  cyclegan.time_limit_min = 0.0  # >0: stop with a checkpoint after this many minutes of a call; a rerun resumes.

  # --- supervised ceiling (lmi_jax/baselines/supervised.py) -------------------------
  config.supervised = supervised = ml_collections.ConfigDict()
  supervised.loss = "l1"  # Regression loss of prediction vs registered target: l1 (conditional median, sharper edges) | l2 (mean).
  supervised.batch_size = 8  # Registered source/target pairs per step.
  supervised.num_steps = 1000  # Adam steps on the model.* network (fed the source slice, constant noise label).
  supervised.lr = 3e-4  # Adam learning rate (the paper's for this network), betas (0.9, 0.999).
  supervised.hflip = True  # Random horizontal flips of the pairs (source and target together).
  supervised.log_every = 50  # Steps between metric log lines and TensorBoard scalars.
  supervised.checkpoint_every = 250  # Steps between checkpoints in workdir/supervised/checkpoints (one more at the end).
  supervised.preview_every = 500  # Steps between previews in workdir/supervised (0: only at the end).
  supervised.time_limit_min = 0.0  # >0: stop with a checkpoint after this many minutes of a call; a rerun resumes.

  # --- StyleGAN2-ADA inversion baseline (lmi_jax/baselines/stylegan/) ------------
  config.stylegan = stylegan = ml_collections.ConfigDict()
  stylegan.z_dim = 64  # Latent z size (StyleGAN2: 512).
  stylegan.w_dim = 64  # Intermediate latent w size; W+ is (2 log2(image_size) - 2) x w_dim.
  stylegan.mapping_layers = 2  # Fully connected layers of the mapping network (ADA at small data: 2; StyleGAN2: 8).
  stylegan.mapping_lr_mul = 0.01  # Learning-rate multiplier of the mapping network (StyleGAN2: 0.01).
  stylegan.channel_base = 1024  # Channels at resolution r: min(channel_base / r, channel_max), in G, D and the encoder.
  stylegan.channel_max = 64  # Most channels of any layer (StyleGAN2: 512).
  stylegan.mbstd_group = 4  # Group size of D's minibatch standard deviation.
  stylegan.batch_size = 8  # Images per G and D step (8: twice the steps of 16 in the same CPU time).
  stylegan.num_steps = 100_000  # Training iterations (each a G and a D step); the time limit usually ends it first.
  stylegan.g_lr = 0.0025  # Adam learning rate of G (betas 0, 0.99 as StyleGAN2).
  stylegan.d_lr = 0.0025  # Adam learning rate of D.
  stylegan.r1_gamma = 0.1  # R1 weight gamma (ADA's rule 0.0002 * size^2 / batch at 64 px, batch 8); 0: off.
  stylegan.r1_interval = 16  # D steps between lazy R1 steps.
  stylegan.pl_weight = 2.0  # Path-length regularisation weight (StyleGAN2: 2); 0: off.
  stylegan.pl_interval = 4  # G steps between lazy path-length steps.
  stylegan.style_mixing = 0.9  # Chance that a generated image mixes the styles of two z.
  stylegan.ema_kimg = 2.5  # Half-life of G's EMA in thousands of images (ADA: 10 * batch / 32).
  stylegan.ema_rampup = 0.05  # The EMA half-life is at most this fraction of the images seen (0.05 as ADA).
  stylegan.ada_target = 0.6  # ADA's target r_t = E[sign D(real)]; p rises above it and falls below.
  stylegan.ada_interval = 4  # Steps between updates of ADA's p.
  stylegan.ada_kimg = 100.0  # Thousands of images over which p can move from 0 to 1 (ADA: 500; runs here are short).
  stylegan.log_every = 50  # Steps between log lines and TensorBoard scalars (GAN and encoder).
  stylegan.checkpoint_every = 500  # Steps between checkpoints in workdir/stylegan[/encoder]/checkpoints (one more at the end).
  stylegan.preview_every = 500  # Steps between previews (GAN samples; encoder reconstructions) in workdir/stylegan[/encoder]/preview.png and TensorBoard (0: at the end only).
  stylegan.time_limit_min = 0.0  # >0: the GAN stops with a checkpoint after this many minutes of a call; a rerun resumes.
  stylegan.encoder_steps = 3000  # Steps of the in-domain encoder, trained after the GAN.
  stylegan.encoder_batch_size = 8  # Target slices per encoder step.
  stylegan.encoder_lr = 1e-3  # Adam learning rate of the encoder.
  stylegan.encoder_feature_weight = 1.0  # Weight of the D-feature distance in the encoder's loss.
  stylegan.encoder_adv_weight = 0.05  # Weight of softplus(-D(G(E(x)))) in the encoder's loss (Zhu et al.: 0.1 of a larger loss).
  stylegan.encoder_time_limit_min = 0.0  # >0: the encoder stops with a checkpoint after this many minutes of a call.
  stylegan.feature_blocks = 2  # D blocks whose features (with fromRGB's) form the feature-matching loss.
  stylegan.inversion_steps = 5000  # Adam steps of the W+ inversion of each source slice (the paper: 5000).
  stylegan.inversion_lr = 0.01  # Peak Adam learning rate of the inversion (Zhu et al.: 0.01); 5% ramp-up, cosine ramp-down over the last 25%.
  stylegan.inversion_feature_weight = 1.0  # Weight of the D-feature distance in the inversion loss.
  stylegan.inversion_domain_weight = 0.0  # Weight of Zhu et al.'s domain regulariser ||w - E(G(w))||^2; 0: off.
  stylegan.inversion_log_every = 250  # Inversion steps per jitted chunk and progress line (at most a tenth of the steps).

  del data, lmi, model, sde, training, sampling, evaluation, cyclegan, supervised, stylegan
  return config
