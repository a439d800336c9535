source /work/venv/bin/activate
cd /work/main
for r in 1 2 3 4 5; do for m in smollm2-135m /tmp/runs/slice0.2 /tmp/runs/slice0.2s /tmp/runs/slice0.3s; do
  PYTHONPATH=src python bench/speed/slicegpt_speed.py --model $m --batches 1,16 --prompt-len 128 --gen-len 32 --repeats 5 --json /tmp/cpuspeed/$(basename $m)_$r.json > /dev/null 2>>/tmp/cpuspeed/err.log
  echo "$r $m $(date +%T)" >> /tmp/cpuspeed/progress
done; done
echo done >> /tmp/cpuspeed/progress
