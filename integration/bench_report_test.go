package integration

import (
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// report is what `make bench` writes: every handler's figures, the floor's
// and the ratios of each handler's figures to the baseline's.
type report struct {
	Date     string            `json:"date"`
	Host     map[string]string `json:"host"`
	Command  string            `json:"command"`
	Baseline string            `json:"baseline"`
	Floor    *summary          `json:"floor"`
	Handlers []*summary        `json:"handlers"`
	// Figures in table order; Ratios[handler][figure] = handler / baseline.
	Figures []string                      `json:"figures"`
	Ratios  map[string]map[string]float64 `json:"ratios"`
	stats   []*handlerStats
}

// summary is one handler's figures.
type summary struct {
	Name    string `json:"name"`
	Handler string `json:"handler,omitempty"`
	// Latency[mode][operation], in milliseconds.
	Latency map[string]map[string]percentiles `json:"latency_ms"`
	// CPU seconds of containerd per 100 lifecycles, by mode.
	CPUPer100 map[string]float64 `json:"containerd_cpu_s_per_100_lifecycles"`
	// Lifecycles per second, by mode.
	Throughput map[string]float64 `json:"lifecycles_per_s"`
	// The pod's run+stop+remove p50 minus the floor's, by mode.
	OverheadMS map[string]float64 `json:"overhead_above_floor_ms,omitempty"`
	RuncCalls  map[string]float64 `json:"runc_calls_per_lifecycle"`
	ShimCalls  map[string]float64 `json:"shim_calls_per_lifecycle"`
	Live       []liveSample       `json:"live,omitempty"`
	// ShimKillMS is each shim kill's ms until its last pod was NOTREADY.
	ShimKillMS []float64 `json:"shim_kill_ms,omitempty"`
	values     map[string]float64
}

type percentiles struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
}

var (
	benchModes = []string{"serial", "parallel"}
	// tableOps are the operations whose p50/p90/p99 the table shows.
	tableOps = []string{opRun, opStatus, opStatusVerbose, opStop, opRemove, opPod, opLifecycle}
	// containerOps are CRI's own container calls, the same code for every
	// handler: their ratios show the run's noise.
	containerOps = []string{opCreate, opStart, opStopContainer, opRemoveContainer}
)

func newReport(floor *handlerStats, stats []*handlerStats) *report {
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	r := &report{
		Date:     time.Now().UTC().Format(time.RFC3339),
		Host:     map[string]string{"hostname": host, "kernel": strings.TrimSpace(string(kernel)), "cpus": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version()},
		Command:  strings.Join(os.Args, " "),
		Baseline: stats[0].Name,
		Ratios:   map[string]map[string]float64{},
		stats:    append([]*handlerStats{floor}, stats...),
	}
	r.Floor = summarize(floor, nil)
	for _, h := range stats {
		r.Handlers = append(r.Handlers, summarize(h, r.Floor))
	}
	r.Figures = figureNames(r.Handlers[0])
	base := r.Handlers[0].values
	for _, s := range r.Handlers[1:] {
		r.Ratios[s.Name] = map[string]float64{}
		for _, f := range r.Figures {
			if v, ok := s.values[f]; ok && base[f] != 0 {
				r.Ratios[s.Name][f] = v / base[f]
			}
		}
	}
	return r
}

func summarize(h *handlerStats, floor *summary) *summary {
	s := &summary{
		Name: h.Name, Handler: h.Handler,
		Latency:    map[string]map[string]percentiles{},
		CPUPer100:  map[string]float64{},
		Throughput: map[string]float64{},
		RuncCalls:  h.RuncCalls, ShimCalls: h.ShimCalls, Live: h.Live,
		values: map[string]float64{},
	}
	set := func(name string, v float64) { s.values[name] = v }
	for _, mode := range benchModes {
		s.Latency[mode] = map[string]percentiles{}
		for op, d := range h.latencies[mode] {
			p := percentilesOf(d)
			s.Latency[mode][op] = p
			set(fmt.Sprintf("%s %s p50 ms", mode, op), p.P50)
			set(fmt.Sprintf("%s %s p90 ms", mode, op), p.P90)
			set(fmt.Sprintf("%s %s p99 ms", mode, op), p.P99)
		}
		if n := h.lifecycles[mode]; n > 0 {
			s.CPUPer100[mode] = h.cpu[mode].Seconds() * 100 / float64(n)
			s.Throughput[mode] = float64(n) / h.wall[mode].Seconds()
			set(mode+" containerd CPU s / 100 lifecycles", s.CPUPer100[mode])
			set(mode+" machine CPU s / 100 lifecycles", h.machineCPU[mode].Seconds()*100/float64(n))
			set(mode+" lifecycles/s", s.Throughput[mode])
			set(mode+" ms waited on other pods / lifecycle", float64(h.groupWait[mode].Microseconds())/1000/float64(n))
		}
		if floor != nil && h.lifecycles[mode] > 0 {
			if s.OverheadMS == nil {
				s.OverheadMS = map[string]float64{}
			}
			s.OverheadMS[mode] = s.Latency[mode][opPod].P50 - floor.Latency[mode][opPod].P50
			set(mode+" overhead above floor p50 ms", s.OverheadMS[mode])
		}
	}
	set("runc calls / lifecycle", h.RuncCalls["total"])
	set("shim calls / lifecycle", h.ShimCalls["total"])
	for _, l := range h.Live {
		set(fmt.Sprintf("RSS MiB, %d pods", l.Pods), float64(l.RSSKiB)/1024)
		set(fmt.Sprintf("goroutines, %d pods", l.Pods), float64(l.Goroutines))
		if l.Pods > 0 {
			set(fmt.Sprintf("shims, %d pods", l.Pods), float64(l.Shims))
			set(fmt.Sprintf("node KiB per pod, %d pods", l.Pods), l.NodeKiBPerPod)
		}
	}
	if k := h.ShimKill; k != nil {
		s.ShimKillMS = k.RoundsMS
		median, longest := k.medianAndMax()
		set("ms to NOTREADY after a shim kill", median)
		set("ms to NOTREADY after a shim kill, slowest", longest)
		set("pods of a killed shim", float64(k.Pods))
	}
	return s
}

// figureNames lists the table's rows in a fixed order.
func figureNames(s *summary) []string {
	var names []string
	add := func(n string) {
		if _, ok := s.values[n]; ok {
			names = append(names, n)
		}
	}
	for _, mode := range benchModes {
		for _, op := range tableOps {
			for _, p := range []string{"p50", "p90", "p99"} {
				add(fmt.Sprintf("%s %s %s ms", mode, op, p))
			}
		}
		for _, op := range containerOps {
			add(fmt.Sprintf("%s %s p50 ms", mode, op))
		}
		add(mode + " overhead above floor p50 ms")
		add(mode + " containerd CPU s / 100 lifecycles")
		add(mode + " machine CPU s / 100 lifecycles")
		add(mode + " lifecycles/s")
		add(mode + " ms waited on other pods / lifecycle")
	}
	add("runc calls / lifecycle")
	add("shim calls / lifecycle")
	for _, l := range s.Live {
		add(fmt.Sprintf("RSS MiB, %d pods", l.Pods))
		add(fmt.Sprintf("goroutines, %d pods", l.Pods))
		add(fmt.Sprintf("shims, %d pods", l.Pods))
		add(fmt.Sprintf("node KiB per pod, %d pods", l.Pods))
	}
	add("ms to NOTREADY after a shim kill")
	add("ms to NOTREADY after a shim kill, slowest")
	add("pods of a killed shim")
	return names
}

// percentilesOf uses the nearest-rank method, in milliseconds.
func percentilesOf(d []time.Duration) percentiles {
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) float64 {
		if len(s) == 0 {
			return 0
		}
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return float64(s[max(i, 0)].Microseconds()) / 1000
	}
	return percentiles{N: len(s), P50: at(0.50), P90: at(0.90), P99: at(0.99)}
}

func (r *report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.json"), j, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.md"), []byte(r.markdown()), 0o644); err != nil {
		return err
	}
	return r.chart(filepath.Join(dir, "bench.png"))
}

// markdown is a table with a column per handler and a ratio column per
// handler but the baseline, then the floor and the calls by subcommand.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Generated %s on %s (%s CPUs, kernel %s) by:\n\n    %s\n\n",
		r.Date, r.Host["hostname"], r.Host["cpus"], r.Host["kernel"], r.Command)
	b.WriteString("| figure |")
	for _, s := range r.Handlers {
		fmt.Fprintf(&b, " %s |", s.Name)
	}
	for _, s := range r.Handlers[1:] {
		fmt.Fprintf(&b, " %s / %s |", s.Name, r.Baseline)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", 2*len(r.Handlers)-1) + "\n")
	for _, f := range r.Figures {
		fmt.Fprintf(&b, "| %s |", f)
		for _, s := range r.Handlers {
			if v, ok := s.values[f]; ok {
				fmt.Fprintf(&b, " %s |", formatValue(v))
			} else {
				b.WriteString(" – |")
			}
		}
		for _, s := range r.Handlers[1:] {
			if v, ok := r.Ratios[s.Name][f]; ok {
				fmt.Fprintf(&b, " %.2f |", v)
			} else {
				b.WriteString(" – |")
			}
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\nFloor (pause container and task through containerd alone, no CRI, no CNI), p50 ms: serial %s, parallel %s.\n",
		formatValue(r.Floor.Latency["serial"][opPod].P50), formatValue(r.Floor.Latency["parallel"][opPod].P50))
	b.WriteString("\nCalls per lifecycle by subcommand (runc | shim):\n\n")
	for _, s := range append([]*summary{r.Floor}, r.Handlers...) {
		fmt.Fprintf(&b, "- %s: %s | %s\n", s.Name, formatCalls(s.RuncCalls), formatCalls(s.ShimCalls))
	}
	return b.String()
}

func formatValue(v float64) string {
	if v >= 100 || v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func formatCalls(c map[string]float64) string {
	var parts []string
	for k, v := range c {
		if k != "total" {
			parts = append(parts, fmt.Sprintf("%s %s", k, formatValue(v)))
		}
	}
	slices.Sort(parts)
	return fmt.Sprintf("%s (%s)", formatValue(c["total"]), strings.Join(parts, ", "))
}

// chart draws the latency distributions as box plots, one panel per mode,
// a group of boxes (one per handler and the floor) per operation, on a log
// scale.
func (r *report) chart(path string) error {
	ops := tableOps
	palette := []color.Color{
		color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff}, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
		color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	}
	const boxWidth = 10
	var panels [][]*plot.Plot
	for _, mode := range benchModes {
		if len(r.stats[0].latencies[mode]) == 0 {
			continue
		}
		p := plot.New()
		p.Title.Text = "CRI latency, " + mode + " (ms, log scale)"
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Legend.Top = true
		// An empty last slot keeps the legend off the boxes.
		p.NominalX(append(slices.Clone(ops), "")...)
		for k, h := range r.stats {
			var boxes []plot.Plotter
			for i, op := range ops {
				d := h.latencies[mode][op]
				if len(d) == 0 {
					continue
				}
				v := make(plotter.Values, len(d))
				for j, x := range d {
					v[j] = float64(x.Microseconds()) / 1000
				}
				offset := float64(k) - float64(len(r.stats)-1)/2
				box, err := plotter.NewBoxPlot(vg.Points(boxWidth), float64(i), v)
				if err != nil {
					return err
				}
				box.Offset = vg.Points(offset * (boxWidth + 2))
				box.FillColor = palette[k%len(palette)]
				boxes = append(boxes, box)
			}
			if len(boxes) > 0 {
				p.Add(boxes...)
				p.Legend.Add(h.Name, swatch{palette[k%len(palette)]})
			}
		}
		panels = append(panels, []*plot.Plot{p})
	}
	if len(panels) == 0 {
		return nil // a run of live pods only
	}
	img := vgimg.New(vg.Points(900), vg.Points(float64(450*len(panels))))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadY: vg.Points(10)}
	canvases := plot.Align(panels, tiles, dc)
	for i := range panels {
		panels[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// swatch is a legend entry: a square of the handler's color.
type swatch struct{ color color.Color }

func (s swatch) Thumbnail(c *draw.Canvas) {
	c.FillPolygon(s.color, c.ClipPolygonY([]vg.Point{
		{X: c.Min.X, Y: c.Min.Y}, {X: c.Max.X, Y: c.Min.Y}, {X: c.Max.X, Y: c.Max.Y}, {X: c.Min.X, Y: c.Max.Y},
	}))
}
