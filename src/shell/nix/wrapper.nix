# mergequeue: walks a jobset, one builtins.tryEval per attribute.
{ input }:
let
  cfg = builtins.fromJSON (builtins.readFile input);
  raw = import cfg.file;
  isFn = builtins.isFunction raw;
  takesSystem = isFn && (builtins.functionArgs raw) ? system;
  # Jobset arguments (`[[repos]] args`), given only where the function names them.
  args = if isFn then builtins.intersectAttrs (builtins.functionArgs raw) (cfg.args or { }) else { };
  roots =
    if takesSystem then map (s: { system = s; value = raw (args // { system = s; }); }) cfg.systems
    else [ { system = builtins.head cfg.systems; value = if isFn then raw args else raw; } ];
  # Hydra's evaluator walks every attribute set; Nixpkgs' release.nix relies on it.
  forceRecurse = cfg.forceRecurse or false;
  selected =
    if cfg.rootSystem == null then roots
    else builtins.filter (r: r.system == cfg.rootSystem) roots;
  try = e: if cfg.catch then builtins.tryEval e else { success = true; value = e; };
  # Paths already evaluated (or known to fail) by an earlier call of a resumed evaluation.
  skipSet = builtins.listToAttrs
    (map (p: { name = builtins.toJSON p; value = true; }) (cfg.skip or [ ]));
  # In trace mode, progress goes to stderr so that a call that dies on an error tryEval cannot
  # catch still tells which attribute was being evaluated and which ones were complete.
  traced = cfg.trace or false;
  begin = path: r:
    if traced then builtins.trace "mergequeue-eval-begin ${builtins.toJSON path}" r else r;
  done = rows:
    if traced then builtins.trace "mergequeue-eval-rows ${builtins.toJSON rows}" rows else rows;
  kindOf = v:
    if !(builtins.isAttrs v) then "other"
    else if (v.type or null) == "derivation" then "drv"
    else if forceRecurse || (v.recurseForDerivations or false) == true then "rec"
    else "set";
  # A maintainer as Nixpkgs writes one (an attribute set) or a plain handle; only its
  # string contact fields are kept.
  maintainerOf = m:
    if builtins.isString m then m
    else if builtins.isAttrs m then
      builtins.listToAttrs (builtins.concatMap
        (k: if builtins.isString (m.${k} or null) then [ { name = k; value = m.${k}; } ] else [ ])
        [ "github" "email" "name" "matrix" ])
    else "unknown";
  maintainersOf = d:
    let
      ms = (d.meta or { }).maintainers or [ ];
      names = if builtins.isList ms then map maintainerOf ms else [ ];
      r = builtins.tryEval (builtins.deepSeq names names);
    in
    if r.success then r.value else [ ];
  job = system: path: d:
    let
      outs = d.outputs or [ "out" ];
      info = {
        drvPath = d.drvPath;
        system = if builtins.isString d.system then d.system else system;
        outputs = builtins.listToAttrs (map (o: { name = o; value = d.${o}.outPath; }) outs);
      };
      r = try (builtins.deepSeq info info);
    in
    done (if r.success then [ (r.value // { inherit path; maintainers = maintainersOf d; }) ]
    else [ { inherit path system; error = true; } ]);
  # Each attribute is evaluated completely before the next one begins.
  walk = system: path: v:
    if skipSet ? ${builtins.toJSON path} then [ ]
    else begin path (let rows = walk' system path v; in builtins.deepSeq rows rows);
  walk' = system: path: v:
    let k = try (kindOf v); in
    if !k.success then done [ { inherit path system; error = true; } ]
    else if k.value == "drv" then job system path v
    else if k.value == "rec" then children system path v
    else [ ];
  children = system: path: v:
    builtins.concatMap (n: walk system (path ++ [ n ]) v.${n}) (builtins.attrNames v);
  # Follows `rest` from `v`, then applies `f`.
  lookup = f: system: v: path: rest:
    if rest == [ ] then f system path v
    else
      let
        n = builtins.head rest;
        k = try (builtins.isAttrs v && v ? ${n});
      in
      if !k.success then done [ { inherit path system; error = true; } ]
      else if !k.value then done [ { inherit path system; missing = true; } ]
      else lookup f system v.${n} path (builtins.tail rest);
  list = system: path: v:
    let k = try (kindOf v); in
    if !k.success then [ { inherit path system; error = true; } ]
    else [ {
      inherit path system;
      kind = k.value;
      names = if k.value == "rec" || (path == [ ] && k.value != "other")
        then builtins.attrNames v else [ ];
    } ];
  checkTop = r:
    if builtins.isAttrs r.value then r.value
    else throw "the jobset does not evaluate to an attribute set";
  perRoot = r:
    if cfg.select == null then
      (if cfg.mode == "list" then list r.system [ ] (checkTop r) else children r.system [ ] (checkTop r))
    else
      builtins.concatMap
        (p: lookup (if cfg.mode == "list" then list else walk) r.system (checkTop r) p p)
        cfg.select;
in
builtins.concatMap perRoot selected
