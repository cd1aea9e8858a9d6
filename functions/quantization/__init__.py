"""Quantization and memory planning, generic over the model.

Nothing here names a model family. A family (Mochi today) describes itself in `functions/models/`:
its skip patterns and per-component methods (`rules.QuantizationRules`), and its shapes and
activation formulas for the planner (`description.ModelDescription`).

- `layers`: fp8 formats and the fp8 Linear layers written here;
- `targets`: which Linear layers a method replaces, and what a model really stores;
- `methods`: one small class per quantization method, `quantize_module`;
- `rules`: a model family's rules, and quantizing a whole pipeline by them;
- `shapes`: Linear shapes and the bytes each method stores for them (no weights);
- `description`: what a model family tells the planner;
- `jobs`, `gpus`, `planner`: render/train jobs, the GPU table, peak-memory estimates and picks.
"""
