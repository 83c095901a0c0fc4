"""The peer worker of bench/llm_oneshot.py: llmcompressor's SparseGPTModifier / WandaPruningModifier through oneshot(),
run by the llmcompressor venv's python (bench/make_llmcompressor_venv.sh). One method and target per process."""
import argparse, os, sys, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.dirname(__file__))
import torch
from llm_common import N_CALIB, SEQ, load_data, load_model, peak_rss_mb, report, save_state, timed

p = argparse.ArgumentParser()
p.add_argument('--model', choices=['llama', 'gpt2'], default='llama')
p.add_argument('--method', choices=['sparsegpt', 'wanda', 'sparsegpt+owl', 'wanda+owl'], required=True)
p.add_argument('--target', required=True)  # 0.5, 0.7 or 2:4
p.add_argument('--out', required=True)
p.add_argument('--threads', type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)
warnings.filterwarnings('ignore')
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

model,calib = load_model(a.model),load_data(a.model)['calib']
ds = Dataset.from_dict({'input_ids': calib.tolist(), 'attention_mask': torch.ones_like(calib).tolist()})
nm = a.target if ':' in a.target else '0:0'
sparsity = 1 - int(nm.split(':')[0]) / int(nm.split(':')[1]) if ':' in a.target else float(a.target)
Mod = SparseGPTModifier if a.method.startswith('sparsegpt') else WandaPruningModifier
owl = dict(sparsity_profile='owl', owl_m=5, owl_lmbda=0.08) if a.method.endswith('+owl') else {}
# GPT-2's layers are transformers' Conv1D; llmcompressor 0.14 has code for them but leaves them out of its prunable types
recipe = Mod(sparsity=sparsity, mask_structure=nm, targets=['Conv1D' if a.model == 'gpt2' else 'Linear'], ignore=['re:.*lm_head'], **owl)
base = peak_rss_mb()
secs = timed(lambda: oneshot(model=model, recipe=recipe, dataset=ds, num_calibration_samples=N_CALIB, max_seq_length=SEQ))
save_state(model, a.out)
report(seconds=secs, peak_mb=peak_rss_mb(), base_mb=base)
