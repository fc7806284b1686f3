// Draw every plotly figure of the page: each .moe-plotly element holds its figure's JSON (the
// notebook's application/vnd.plotly.v1+json output) in a script tag; plotly.min.js is the
// site's own copy (tools/build_site.py copies it from the plotly package).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".moe-plotly").forEach(function (element) {
    var figure = JSON.parse(element.querySelector("script").textContent);
    var config = Object.assign({ displaylogo: false, responsive: true }, figure.config || {});
    Plotly.newPlot(element, figure.data || [], figure.layout || {}, config);
  });
});
