# Names of the functions a profiled vhotplug ran (callgrind files written with --demangle=no), in
# order of first appearance, restricted to the binary's own symbols. Used by hot-functions.sh.
# usage: hot-functions.py DIR-WITH-cg.*-FILES NM-OUTPUT > hot-functions.txt
import re,glob,sys
nm=set()
for l in open(sys.argv[2]):
    p=l.rstrip('\n').split(' ',2)
    if len(p)==3 and p[1] in 'tTwW': nm.add(p[2])
names=[];seen=set()
files=sorted(glob.glob(sys.argv[1]+'/cg.*'), key=lambda f: -len(open(f).read()))
for f in files:
    for l in open(f):
        m=re.match(r'^c?fn=\(\d+\) (.*)$',l)
        if m and m.group(1) in nm and m.group(1) not in seen:
            seen.add(m.group(1)); names.append(m.group(1))
print(len(names), file=sys.stderr)
sys.stdout.write('\n'.join(names)+'\n')
