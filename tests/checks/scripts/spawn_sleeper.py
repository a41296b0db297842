"""Spawn a sleeping child, write its pid to argv[1], then sleep (or exit at once with 'leave').

spawn_sleeper.py PIDFILE [wait|leave|ignore-term]
  wait         sleep 60 s (for timeout / terminate tests)
  leave        exit 0 at once, leaving the child behind in the process group
  ignore-term  like wait, but both processes ignore SIGTERM (needs SIGKILL)
"""

import signal
import subprocess
import sys
import time

pidfile, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "wait")
child_code = "import signal, time\n"
if mode == "ignore-term":
    child_code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child_code += "print('child ready', flush=True)\ntime.sleep(60)\n"
child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE)
child.stdout.readline()  # the child has installed its handlers
with open(pidfile, "w") as f:
    f.write(str(child.pid))
print("parent ready", flush=True)
if mode != "leave":
    time.sleep(60)
