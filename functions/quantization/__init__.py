"""Quantization and memory planning, generic over the model.

The generic modules name no model family. A family describes itself once: its skip patterns and
per-component methods (`rules.QuantizationRules`), and its shapes and activation formulas for the
planner (`description.ModelDescription`). Mochi's is `functions/models/mochi_spec.py` (counted from
modules built on the meta device); InfiniteTalk's is `infinitetalk` here (counted by formula from
the published configs, with no model class to build).

- `layers`: fp8 formats and the fp8 Linear layers written here;
- `targets`: which Linear layers a method replaces, and what a model really stores;
- `methods`: one small class per quantization method, `quantize_module`;
- `rules`: a model family's rules, and quantizing a whole pipeline by them;
- `shapes`: Linear shapes and the bytes each method stores for them (no weights);
- `description`: what a model family tells the planner;
- `jobs`, `gpus`, `planner`: render/train jobs, the GPU table, peak-memory estimates and picks;
- `infinitetalk`: InfiniteTalk (Wan2.1-I2V-14B + audio): its description, chunk job and `auto` pick.
"""
